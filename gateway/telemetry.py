"""Every Prometheus metric keygate exports: names, help, labels, buckets, where they are
kept, and how a scrape renders them.

**What a label may hold.** Only values keygate itself bounds: route names from the
config, error codes from keygate's own code, status classes (``2xx``…), stage and
cache names from this module, store operation names from ``gateway/store.py``, port
numbers keygate listens on. Never a path, host, key or account a client chose (the
per-account denial counter, whose accounts the store confirms first, is
:class:`gateway.usage.Denials`' business). A value outside the expected set is counted
under ``(other)`` past a small cap, so a bug cannot turn into unbounded series either.

**What the request path pays.** The proxy port, the pipeline and the store get small
objects (:mod:`gateway.series`) whose series were looked up once and are plain numbers:
per request a few ``perf_counter()`` calls, integer increments and bisections, no call
into prometheus_client (whose increments take a lock and several Python calls each:
measured, they were most of what metrics cost). With ``metrics_listen`` empty those
objects are ``None`` and every seam is one ``is not None`` test: no timing, no counting.
(The denial counter and the reload counters stay prometheus_client's: they are not on
an allowed request's path, and denial sampling needs the former anyway.)

**One process or several.** With one process, a scrape renders those numbers as they
are (:class:`HotFamilies` is a collector of the Gateway's own registry), and nothing
touches the disk. ``keygate serve --workers N`` runs N processes on the same ports, and
a scrape reaches one of them. So ``run_workers`` gives the workers a fresh private
directory in ``PROMETHEUS_MULTIPROC_DIR`` before it spawns them (prometheus_client picks
its value class when it is imported, so the variable must be there when the worker
starts): prometheus_client's multiprocess mode. Each worker's prometheus_client metrics
live in memory-mapped files there, and each worker publishes its request-path totals
into them every ``PUBLISH_INTERVAL`` seconds (and when it answers a scrape, and when it
stops) as gauges of mode ``sum``; a scrape renders the sum of every worker's files
(:class:`WorkersCollector`, which gives those totals back their counter and histogram
types). Open connections are ``livesum`` (an exited worker's file is dropped by
``mark_process_dead``); a dead worker's totals keep counting, as a counter's must. What
is the same in every worker — build info, the policy in force, the renewal-alert gauge
(counted in the background by each worker from the same store) — is a custom collector
rendered by the worker that answers the scrape, once, never summed N times.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import platform
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from . import __version__
from .series import Capped, Family, PipelineMetrics, RequestMetrics, StoreMetrics

if TYPE_CHECKING:
    from .policy.sync import SyncStatus

# A ``_created`` series per counter and histogram doubles what Prometheus stores and is
# not written in multiprocess mode anyway: off, so both modes export the same names.
disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Under --workers, how old another worker's totals may be in a scrape.
PUBLISH_INTERVAL = 0.5

# Stages run from a microsecond (a cached decision) to the upstream's full timeout.
STAGE_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# A Redis round trip on a LAN is ~0.1–0.5 ms; the pool's socket timeout is 5 s.
STORE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
)

STAGES = ("authentication", "authorization", "upstream", "total")
CACHES = ("credential", "decision")
RELOAD_RESULTS = ("success", "failure")

# name: (type, labels, help) — the contract the README table and the dashboard follow.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "keygate_requests": (
        "counter", ("route", "status", "decision"),
        "Requests answered by the proxy port, by route (from the config; (none) before "
        "a route matched), status class and decision: allowed, or the error code of the "
        "refusal (missing_credentials, invalid_credentials, not_permitted, …)",
    ),
    "keygate_decision_requests": (
        "counter", ("route", "status", "decision"),
        "Requests answered by the decision API (nginx auth_request, Traefik ForwardAuth, "
        "Envoy ext_authz), labelled as keygate_requests; status is the refusal's own "
        "(nginx is answered 403 with it in a header)",
    ),
    "keygate_request_duration_seconds": (
        "histogram", ("stage",),
        "Seconds spent per stage: authentication and authorization (every request of the "
        "proxy, decision and management ports), upstream (until the upstream's answer head "
        "arrived), total (the proxy port's handler, start to answer) and decision (the "
        "decision API's handler, start to answer; present once that port runs)",
    ),
    "keygate_forward_errors": (
        "counter", ("route", "code"),
        "Authorized requests that could not be forwarded: upstream_unreachable, "
        "upstream_timeout, bad_header",
    ),
    "keygate_cache_hits": (
        "counter", ("cache",),
        "Lookups answered from a process's cache: credential (key records and grants, "
        "unknown keys included) or decision (policy decisions)",
    ),
    "keygate_cache_misses": (
        "counter", ("cache",),
        "Lookups the cache could not answer (for credentials: a store round trip, also "
        "while the cache is bypassed)",
    ),
    "keygate_cache_evictions": (
        "counter", ("cache",),
        "Entries dropped to make room (a full LRU, or a key's per-account entries)",
    ),
    "keygate_cache_invalidations": (
        "counter", (),
        "Key changes heard on the invalidation channel (each drops the key from the "
        "credential cache)",
    ),
    "keygate_cache_resyncs": (
        "counter", (),
        "Subscriptions to the invalidation channel confirmed, the first included; each "
        "flushes the credential cache (changes may have been missed while away)",
    ),
    "keygate_store_duration_seconds": (
        "histogram", ("operation",),
        "Seconds per store call, by operation (auth_lookup is the request path's)",
    ),
    "keygate_search_copy_duration_seconds": (
        "histogram", (),
        "Seconds to make a process's copy of an account's label index, which answers q "
        "in accounts of at least 20,000 keys (made ahead by a listing or by a search; "
        "each holds about 700 bytes per key of its account while it is made); the count "
        "is the copies made",
    ),
    "keygate_store_errors": (
        "counter", ("operation",),
        "Store calls that failed because Redis was unreachable or timed out (the caller "
        "answered 503 or kept its work for later); invalidation counts a lost channel",
    ),
    "keygate_policy_reloads": (
        "counter", ("result",),
        "Policy reloads (SIGHUP, file watch, POST /api/v1/policy/reload, or another "
        "instance's announcement), by result (failure: refused, the old policy kept); "
        "with --workers each worker reloads and counts",
    ),
    "keygate_policy_info": (
        "gauge", ("version",),
        "The policy in force: its version (content hash) as a label, value 1",
    ),
    "keygate_policy_lines": (
        "gauge", (), "Lines (p and g) of the policy in force",
    ),
    "keygate_policy_in_sync": (
        "gauge", (),
        "1 when the policy in force is the version the deployment announced last (or "
        "none is known yet), 0 when this instance serves another (its files differ)",
    ),
    "keygate_policy_refused": (
        "gauge", (),
        "1 while this instance's last reload was refused (a broken file, roles still "
        "held) and it serves the policy it had, 0 once a reload succeeds; under --workers "
        "1 when any live worker's was",
    ),
    "keygate_policy_announced_info": (
        "gauge", ("version",),
        "The policy version the deployment announced last (the last reload's, on the "
        "store), as a label, value 1; no sample until it is known",
    ),
    "keygate_open_connections": (
        "gauge", ("port",),
        "Client connections open now, by listening port, summed over live workers",
    ),
    "keygate_connection_refusals": (
        "counter", ("code",),
        "Requests refused by the connection guard before any handler (a malformed head, "
        "by its error code) and connections refused at the cap (too_many_connections)",
    ),
    "keygate_build_info": (
        "gauge", ("version", "python", "aiohttp"),
        "keygate's version and those of Python and aiohttp, value 1",
    ),
    "keygate_access_denied": (
        "counter", ("account", "resource"),
        "Requests refused with 403, by account and resource; denials in accounts that "
        "do not exist are counted as account='(unknown)'",
    ),
    "keygate_keys_renewal_alert": (
        "gauge", ("account", "level"),
        "Generated keys per account and renewal alert level, as of the last background "
        "count (see gateway.renewal_gauge)",
    ),
    "keygate_keys_renewal_alert_computed_timestamp_seconds": (
        "gauge", (), "Unix time at which the last renewal-alert count finished",
    ),
}


def _help(name: str) -> str:
    return FAMILIES[name][2]


def _labels(name: str) -> tuple[str, ...]:
    return FAMILIES[name][1]


def _family(name: str, buckets: tuple[float, ...] | None = None) -> Family:
    _, labels, help_text = FAMILIES[name]
    return Family(name, labels, help_text, buckets)


def multiprocess_dir() -> str | None:
    """The directory of this process's metric files when it is one of several workers
    (``PROMETHEUS_MULTIPROC_DIR``, set by ``run_workers``), else None.

    prometheus_client chose its value class when it was imported. If the variable came
    later, values live in this process's memory only and a file-based scrape would not
    see them: a wiring bug, refused loudly rather than exporting zeros."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported; set it before "
            "the process starts (run_workers does, for the workers it spawns)"
        )
    return path


@contextlib.contextmanager
def workers_share_metrics() -> Iterator[str]:
    """For ``run_workers``: a fresh private directory (mode 0700) in
    ``PROMETHEUS_MULTIPROC_DIR`` while the block runs, so that the workers it spawns
    (which inherit the environment and import prometheus_client afresh) write their
    metrics there. Fresh per run, because files left by an earlier run would be summed
    into this one's counters; removed at the end, with the variable."""
    path = tempfile.mkdtemp(prefix="keygate-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int, path: str) -> None:
    """Drop an exited worker's ``live*`` gauges (open connections), which would otherwise
    be summed as if its connections were still open. Its counters stay: what it counted
    happened, and a counter must not go down."""
    mark_process_dead(pid, path)


class HotFamilies:
    """The families the request path counts into, and the two ways they leave it: a
    collector rendering them at scrape time (one process), or :meth:`publish`, which
    copies them into prometheus_client's multiprocess files (``--workers``)."""

    def __init__(self) -> None:
        self.durations = _family("keygate_request_duration_seconds", STAGE_BUCKETS)
        self.hits = _family("keygate_cache_hits")
        self.misses = _family("keygate_cache_misses")
        self.evictions = _family("keygate_cache_evictions")
        for cache in CACHES:  # a ratio needs both sides present, even at 0
            self.hits.child(cache), self.misses.child(cache), self.evictions.child(cache)
        self.decision_family = _family("keygate_decision_requests")
        self.decision_requests: RequestMetrics | None = None  # made when that port starts
        self.families = [
            _family("keygate_requests"), self.durations, _family("keygate_forward_errors"),
            self.decision_family,
            self.hits, self.misses, self.evictions,
            _family("keygate_cache_invalidations"), _family("keygate_cache_resyncs"),
            _family("keygate_store_duration_seconds", STORE_BUCKETS),
            _family("keygate_store_errors"),
            _family("keygate_search_copy_duration_seconds", STAGE_BUCKETS),
        ]
        (requests, _, forward_errors, _, _, _, _, invalidations, resyncs, store, errors,
         copies) = self.families
        for stage in STAGES:
            self.durations.child(stage)
        invalidations.child(), resyncs.child(), copies.child()
        self.requests = RequestMetrics(requests, self.durations, forward_errors)
        self.forward_errors = forward_errors
        self.pipeline = PipelineMetrics(self.durations, self.hits, self.misses,
                                        self.evictions)
        self.store = StoreMetrics(self.hits, self.misses, self.evictions, invalidations,
                                  resyncs, store, errors, copies)
        self._gauges: dict[str, Gauge] = {}

    # -- one process: rendered as they are -------------------------------------------
    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.render()

    # -- several: published as gauges (mode "sum") and typed back at scrape ----------
    def publish(self) -> None:
        """Write every series' current totals to this worker's file. Absolute values,
        so publishing twice is harmless and a dead worker's last totals keep counting
        in the sum, as a counter must."""
        for family in self.families:
            for values, series in list(family.series.items()):
                if family.buckets is None:
                    if series.published is None:
                        series.published = _child(self._gauge(family.name, family), values)
                    elif series.n == series.last:
                        continue
                    series.published.set(series.n)
                    series.last = series.n
                    continue
                cumulative = series.cumulative()
                if series.published is None:
                    buckets = self._gauge(family.name + "_bucket", family, ("le",))
                    series.published = (
                        [buckets.labels(*values, le) for le, _ in cumulative],
                        _child(self._gauge(family.name + "_sum", family), values),
                    )
                elif series.counts == series.last:
                    continue
                bucket_gauges, sum_gauge = series.published
                for gauge, (_, total) in zip(bucket_gauges, cumulative, strict=True):
                    gauge.set(total)
                sum_gauge.set(series.sum)
                series.last = series.counts.copy()

    def _gauge(self, name: str, family: Family, extra: tuple[str, ...] = ()) -> Gauge:
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = Gauge(
                name, family.help, (*family.labels, *extra), registry=None,
                multiprocess_mode="sum",
            )
        return gauge


def _child(gauge: Gauge, values: tuple[str, ...]) -> Gauge:
    return gauge.labels(*values) if values else gauge


class WorkersCollector:
    """A scrape under ``--workers``: every worker's file summed
    (:class:`~prometheus_client.multiprocess.MultiProcessCollector`), with the request
    path's families, which travel as gauges, given back their counter and histogram
    types."""

    def __init__(self, path: str):
        self.files = MultiProcessCollector(None, path)
        self.counters = {n for n, (kind, _, _) in FAMILIES.items() if kind == "counter"}
        self.histograms = {n for n, (kind, _, _) in FAMILIES.items() if kind == "histogram"}

    def collect(self) -> Iterator[Metric]:
        merged = {metric.name: metric for metric in self.files.collect()}
        for name, metric in merged.items():
            if metric.type != "gauge":
                yield metric
            elif name in self.counters:
                counter = CounterMetricFamily(name, FAMILIES[name][2],
                                              labels=list(FAMILIES[name][1]))
                for sample in metric.samples:
                    counter.add_metric([sample.labels[k] for k in FAMILIES[name][1]],
                                       sample.value)
                yield counter
            elif name.endswith("_bucket") and name[:-7] in self.histograms:
                yield self._histogram(name[:-7], metric, merged.get(name[:-7] + "_sum"))
            elif not (name.endswith("_sum") and name[:-4] in self.histograms):
                yield metric

    @staticmethod
    def _histogram(name: str, buckets: Metric, sums: Metric | None) -> Metric:
        labels = list(FAMILIES[name][1])
        series: dict[tuple[str, ...], list[tuple[float, str, float]]] = {}
        for sample in buckets.samples:
            le = sample.labels["le"]
            series.setdefault(tuple(sample.labels[k] for k in labels), []).append(
                (float(le), le, sample.value))
        totals = {tuple(s.labels[k] for k in labels): s.value
                  for s in (sums.samples if sums is not None else ())}
        histogram = HistogramMetricFamily(name, FAMILIES[name][2], labels=labels)
        for values, bounds in series.items():
            bounds.sort()
            histogram.add_metric(list(values), [(le, v) for _, le, v in bounds],
                                 totals.get(values, 0.0))
        return histogram


class ConnectionMetrics:
    """The connection guard's gauges and refusals: one guard per process, so one of
    these per process (see :func:`connection_metrics`)."""

    def __init__(self) -> None:
        self.open = Gauge("keygate_open_connections", _help("keygate_open_connections"),
                          _labels("keygate_open_connections"), registry=None,
                          multiprocess_mode="livesum")
        self.refusals = Counter("keygate_connection_refusals",
                                _help("keygate_connection_refusals"),
                                _labels("keygate_connection_refusals"), registry=None)
        self._codes = Capped()
        self._refused: dict[str, Any] = {}

    def port(self, port: int) -> Any:
        """The open-connections child of one listening port (looked up per listen)."""
        return self.open.labels(str(port))

    def refused(self, code: str) -> None:
        child = self._refused.get(code)
        if child is None:
            child = self._refused[code] = self.refusals.labels(self._codes(code))
        child.inc()


_CONNECTIONS: ConnectionMetrics | None = None


def connection_metrics() -> ConnectionMetrics:
    """The process's connection metrics, created on first use. Process-wide because the
    guard is: every :class:`Telemetry` of the process renders the same ones."""
    global _CONNECTIONS
    if _CONNECTIONS is None:
        _CONNECTIONS = ConnectionMetrics()
    return _CONNECTIONS


class BuildInfo:
    """``keygate_build_info``: constant, identical in every worker."""

    def __init__(self) -> None:
        self.labels = [__version__, platform.python_version(), aiohttp.__version__]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("keygate_build_info", _help("keygate_build_info"),
                                   labels=list(_labels("keygate_build_info")))
        family.add_metric(self.labels, 1)
        yield family


class PolicyInfo:
    """The policy in force and the announced one, read at scrape time (a reload swaps
    the policy without telling)."""

    def __init__(self, status: Callable[[], SyncStatus]):
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        info = GaugeMetricFamily("keygate_policy_info", _help("keygate_policy_info"),
                                 labels=["version"])
        info.add_metric([status.version], 1)
        lines = GaugeMetricFamily("keygate_policy_lines", _help("keygate_policy_lines"))
        lines.add_metric([], status.lines)
        in_sync = GaugeMetricFamily("keygate_policy_in_sync", _help("keygate_policy_in_sync"))
        in_sync.add_metric([], 1 if status.in_sync else 0)
        announced = GaugeMetricFamily(
            "keygate_policy_announced_info", _help("keygate_policy_announced_info"),
            labels=["version"])
        if status.announced is not None:
            announced.add_metric([status.announced], 1)
        yield info
        yield lines
        yield in_sync
        yield announced


class Telemetry:
    """The metrics of one keygate process (one Gateway).

    ``enabled`` (``metrics_listen`` set): the request-path objects exist; otherwise
    :attr:`requests`, :attr:`pipeline` and :attr:`store` are None and nothing is timed.
    ``multiprocess`` (a directory, see :func:`multiprocess_dir`): values go to that
    directory's files and :attr:`registry` renders every worker's sum.

    :attr:`registry` is what a scrape renders; :meth:`register` adds a custom collector
    to it (rendered by the answering process only, never summed)."""

    def __init__(self, enabled: bool, multiprocess: str | None = None):
        self.enabled = enabled
        self.multiprocess = multiprocess
        # where prometheus_client's own metrics register: a registry of their own in
        # one process; none under --workers, where the files are the registry
        live = None if multiprocess else CollectorRegistry()
        if multiprocess:
            self.registry = CollectorRegistry()
            self.registry.register(WorkersCollector(multiprocess))
        else:
            assert live is not None
            self.registry = live
        self.denials = self._counter("keygate_access_denied", live)
        self.reloads = self._counter("keygate_policy_reloads", live)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)  # both shown from the start, at 0
        # set by each process: under --workers a POST reload reaches one worker, and the
        # scrape must say a refusal whichever worker answers it (the largest live value)
        self.refused = Gauge("keygate_policy_refused", _help("keygate_policy_refused"),
                             registry=live, multiprocess_mode="livemax")
        self.refused.set(0)
        self.registry.register(BuildInfo())
        self.hot: HotFamilies | None = None
        self.requests: RequestMetrics | None = None
        self.pipeline: PipelineMetrics | None = None
        self.store: StoreMetrics | None = None
        self.connections: ConnectionMetrics | None = None
        if not enabled:
            return
        hot = self.hot = HotFamilies()
        self.requests, self.pipeline, self.store = hot.requests, hot.pipeline, hot.store
        self.connections = connection_metrics()
        if live is not None:
            live.register(hot)
            live.register(self.connections.open)
            live.register(self.connections.refusals)
        else:
            hot.publish()  # every series this worker has, at 0, from the start
            atexit.register(hot.publish)  # and its last totals when it stops

    def decision_requests(self) -> RequestMetrics | None:
        """The decision API's counting (None when metrics are off): its own family, so
        the two ports' requests are told apart, the stage timings shared. Made when the
        port starts, so that a keygate without it exports no "decision" stage."""
        hot = self.hot
        if hot is None:
            return None
        if hot.decision_requests is None:
            hot.decision_requests = RequestMetrics(
                hot.decision_family, hot.durations, hot.forward_errors, total_stage="decision")
        return hot.decision_requests

    @staticmethod
    def _counter(name: str, registry: CollectorRegistry | None) -> Counter:
        return Counter(name, _help(name), _labels(name), registry=registry)

    def register(self, collector: Any) -> None:
        self.registry.register(collector)

    def watch_policy(self, status: Callable[[], SyncStatus]) -> None:
        self.registry.register(PolicyInfo(status))

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(RELOAD_RESULTS[0] if ok else RELOAD_RESULTS[1]).inc()

    def policy_refused(self, refused: bool) -> None:
        self.refused.set(1 if refused else 0)

    async def publishing(self, _app: Any) -> AsyncIterator[None]:
        """For the metrics application's ``cleanup_ctx``: under ``--workers``, copy the
        request path's totals to this worker's file every ``PUBLISH_INTERVAL`` seconds
        while it serves, and once more when it stops. (One process needs none of it:
        a scrape renders the totals themselves.)"""
        hot = self.hot
        if hot is None or self.multiprocess is None:
            yield
            return

        async def every_interval() -> None:
            while True:
                await asyncio.sleep(PUBLISH_INTERVAL)
                hot.publish()

        task = asyncio.get_running_loop().create_task(every_interval())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            hot.publish()

    def exposition(self) -> bytes:
        """The text a scrape gets: in memory (or the workers' files) only, whatever the
        number of keys. Under --workers the answering worker publishes its own totals
        first; the others' are at most ``PUBLISH_INTERVAL`` old."""
        if self.hot is not None and self.multiprocess is not None:
            self.hot.publish()
        return generate_latest(self.registry)
