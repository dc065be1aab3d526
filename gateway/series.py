"""The request path's metrics as plain numbers: what the proxy port, the pipeline and the
store count into, with no call into prometheus_client per request.

A prometheus_client counter increment or histogram observation takes a lock and four
Python calls; a request here costs about seven of them, which measured as the
difference between metrics on and off. So a series is a plain object: :class:`Count`
holds an int, :class:`Timing` per-bucket counts found by bisection and a sum, owned by
the one event loop of the process (no lock). :mod:`gateway.telemetry` renders them at
scrape time (one process) or publishes them to the workers' shared files.

Label values here come from keygate's code or config (see :mod:`gateway.telemetry`);
:class:`Capped` bounds those filled in from code, in case a bug ever made one up.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from time import perf_counter
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from .errors import GatewayError

NO_ROUTE = "(none)"  # a request refused before it matched a route (404, bad path)
ALLOWED = "allowed"
INTERNAL_ERROR = "internal_error"
OTHER = "(other)"
STATUS_CLASSES = tuple(f"{n}xx" for n in range(10))
# Distinct values accepted per label that keygate's code (not the config) fills in;
# far above what the code holds, so reaching it means a bug, counted under (other).
MAX_CODE_VALUES = 128


class Capped:
    """Label values that keygate's code fills in, bounded: past ``MAX_CODE_VALUES``
    distinct ones, the rest are (other). Consulted only when a child is created."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        seen = self.seen
        if value in seen:
            return value
        if len(seen) >= MAX_CODE_VALUES:
            return OTHER
        seen.add(value)
        return value


class Count:
    """One counter series: an int the request path adds to (no lock, no call into
    prometheus_client: one event loop per process owns it)."""

    __slots__ = ("n", "published", "last")

    def __init__(self) -> None:
        self.n = 0
        self.published: Any = None  # its Gauge child under --workers
        self.last = 0  # the value published last

    def inc(self) -> None:
        self.n += 1


class Timing:
    """One histogram series: per-bucket counts (the bucket found by bisection, ``le``
    semantics: a value equal to a bound falls in that bound's bucket) and a sum."""

    __slots__ = ("bounds", "counts", "sum", "published", "last")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.published: Any = None  # (bucket Gauge children, sum Gauge child)
        self.last: list[int] = []  # the counts published last

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        total, buckets = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), total))
        return buckets


class Family:
    """A labelled family of :class:`Count` series, or of :class:`Timing` series when it
    has ``buckets``."""

    def __init__(self, name: str, labels: tuple[str, ...], help_text: str,
                 buckets: tuple[float, ...] | None = None):
        self.name = name
        self.labels = labels
        self.help = help_text
        self.buckets = buckets
        self.series: dict[tuple[str, ...], Any] = {}

    def child(self, *values: str) -> Any:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = (
                Count() if self.buckets is None else Timing(self.buckets))
        return found

    def render(self) -> Metric:
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.help, labels=self.labels)
            for values, count in self.series.items():
                counter.add_metric(values, count.n)
            return counter
        histogram = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for values, timing in self.series.items():
            histogram.add_metric(values, timing.cumulative(), timing.sum)
        return histogram


class RequestMetrics:
    """The proxy port's (or the decision API's) counting: one call per answered request.

    Series are cached per (route, status class, decision), so a request costs a tuple,
    a dict lookup, an integer increment and a bisection; no string is built."""

    __slots__ = ("_requests", "_forward_errors", "_series", "_codes", "total", "upstream")

    def __init__(self, requests: Family, durations: Family, forward_errors: Family,
                 total_stage: str = "total"):
        self._requests = requests
        self._forward_errors = forward_errors
        self._series: dict[tuple[str, int, str], Count] = {}
        self._codes = Capped()
        # the port's handler, start to answer: "total" (proxy port) or "decision"
        self.total: Timing = durations.child(total_stage)
        self.upstream: Timing = durations.child("upstream")

    def answered(self, route: str, status: int, decision: str, started: float) -> None:
        self.total.observe(perf_counter() - started)
        key = (route, status // 100, decision)
        count = self._series.get(key)
        if count is None:
            count = self._new(key)
        count.n += 1

    def refused(self, route: str, refusal: GatewayError, authorized: bool,
                started: float) -> None:
        """A GatewayError answered: a refusal by the pipeline, or (``authorized``) a
        request allowed and then not forwarded, counted as allowed plus its error."""
        if authorized:
            self._forward_errors.child(route, self._codes(refusal.code)).n += 1
            self.answered(route, refusal.status, ALLOWED, started)
        else:
            self.answered(route, refusal.status, refusal.code, started)

    def _new(self, key: tuple[str, int, str]) -> Count:
        route, status_class, decision = key
        label = STATUS_CLASSES[status_class] if 0 <= status_class < 10 else OTHER
        count = self._series[key] = self._requests.child(route, label, self._codes(decision))
        return count


class PipelineMetrics:
    """The pipeline's stage timings and the authorizer's decision-cache counts."""

    __slots__ = ("authentication", "authorization", "decision_hit", "decision_miss",
                 "decision_evicted")

    def __init__(self, durations: Family, hits: Family, misses: Family, evictions: Family):
        self.authentication: Timing = durations.child("authentication")
        self.authorization: Timing = durations.child("authorization")
        # bound methods: the caller's ``metrics.decision_hit()`` is the increment itself
        self.decision_hit = hits.child("decision").inc
        self.decision_miss = misses.child("decision").inc
        self.decision_evicted = evictions.child("decision").inc


class StoreMetrics:
    """What :class:`gateway.store.Store` reports (its ``Observer`` protocol)."""

    __slots__ = ("cache_hit", "cache_miss", "cache_evicted", "invalidated", "resynced",
                 "search_copy_made", "_durations", "_errors", "_timings", "_failures",
                 "_operations")

    def __init__(self, hits: Family, misses: Family, evictions: Family,
                 invalidations: Family, resyncs: Family, durations: Family, errors: Family,
                 copies: Family):
        self.cache_hit = hits.child("credential").inc
        self.cache_miss = misses.child("credential").inc
        self.cache_evicted = evictions.child("credential").inc
        self.invalidated = invalidations.child().inc
        self.resynced = resyncs.child().inc
        self.search_copy_made = copies.child().observe
        self._durations = durations
        self._errors = errors
        self._timings: dict[str, Timing] = {}
        self._failures: dict[str, Count] = {}
        self._operations = Capped()

    def _operation(self, operation: str) -> str:
        return self._operations(operation.lstrip("_"))

    def store_call(self, operation: str, seconds: float) -> None:
        timing = self._timings.get(operation)
        if timing is None:
            timing = self._timings[operation] = self._durations.child(
                self._operation(operation))
        timing.observe(seconds)

    def store_failed(self, operation: str) -> None:
        count = self._failures.get(operation)
        if count is None:
            count = self._failures[operation] = self._errors.child(self._operation(operation))
        count.n += 1
