"""Interleavings on demand: run another change at one exact point of a store call.

``Before`` wraps one of the store's registered Lua scripts (``store.scripts.<name>``),
``BeforeRead`` one of the store's own methods (``store.<name>``, e.g. a read a handler
makes after the request was authenticated), so that a step — another change, made
through keygate's own API, as another instance would make it — runs once just before
(or after) its nth call; every call still runs the real script or method. Nothing of
keygate's is replaced: only the timing is chosen, so a race that would take luck to meet
happens every time.
"""

from __future__ import annotations

from typing import Any


class Before:
    """Wrap a store script so that ``step`` runs once, just before its ``nth`` call (or
    just after, with ``after=True``); every call still runs the real script."""

    def __init__(self, store: Any, name: str, step: Any, nth: int = 1, after: bool = False,
                 counted: Any = None):
        """``counted(*args, **kwargs)``: which calls count towards ``nth`` (all: None),
        e.g. only those on one Redis name when several reads run at once."""
        self.store, self.name, self.step, self.nth, self.after = store, name, step, nth, after
        self.counted = counted
        self.real = getattr(self._holder(), name)
        self.calls = 0
        self.fired = False
        setattr(self._holder(), name, self)

    def _holder(self) -> Any:
        return self.store.scripts

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.counted is not None and not self.counted(*args, **kwargs):
            return await self.real(*args, **kwargs)
        self.calls += 1
        due = self.calls == self.nth and not self.fired
        if due and not self.after:
            self.fired = True
            await self.step()
        result = await self.real(*args, **kwargs)
        if due and self.after:
            self.fired = True
            await self.step()
        return result

    def restore(self) -> None:
        setattr(self._holder(), self.name, self.real)


class BeforeRead(Before):
    """:class:`Before` for a method of the store itself (``store.<name>``): the real
    method still answers every call."""

    def _holder(self) -> Any:
        return self.store

    def restore(self) -> None:
        # the method was shadowed by an instance attribute: drop it, the class's returns
        del self.store.__dict__[self.name]
