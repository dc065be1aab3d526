"""A bounded LRU map with an optional time-to-live, for the request path's caches.

Small on purpose: one ``OrderedDict``, O(1) get/put, no locks (one event loop per
process), and the clock injected so tests move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class LRU(Generic[K, V]):
    def __init__(
        self,
        size: int,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        entry = self._data.get(key, _MISSING)
        if entry is _MISSING:
            return default
        value, expires = entry  # type: ignore[misc]
        if self.ttl is not None and self.clock() >= expires:
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        expires = self.clock() + self.ttl if self.ttl is not None else 0.0
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
