"""One policy version across instances: reloading, announcing, and comparing.

Every instance of a deployment reads its own copy of ``model.conf`` and the policy
files. Nothing makes those copies equal, so keygate makes a difference *visible*:

**Reloading** (a signal, the file watch, ``POST /api/v1/policy/reload``) builds the
candidate :class:`~gateway.policy.Policy` in a worker thread, off the event loop that
answers requests; a file that does not parse is refused with its ``file:line`` and the
old policy keeps serving. A candidate that no longer defines a role some key still holds
is refused too, naming how many keys hold it in which account (:class:`RolesStillHeld`),
unless the caller forces it: those keys would silently lose what the role allowed. Only
then is the candidate swapped in, in one assignment of the authorizer's ``policy``
reference: a request in flight was decided by the old policy or is decided by the new
one, never by a mix, and the decision cache is keyed by version, so no old decision
survives.

**Announcing**: after its reload the instance writes the new version (a content hash,
:attr:`Policy.version`) with who asked and when to the store, and publishes the record's
name on the invalidation channel that already carries key changes (older instances ignore
a name that is not a key's). Every instance that hears it reads the record, and if it
serves another version reloads *its own files* (an announcement carries no policy: the
files in review are the source of truth, not whatever one node holds), then compares. It
reports the outcome in ``/readyz``, in ``keygate_policy_in_sync`` and, once per change of
the two versions, in a warning. A heard announcement does not announce again, so the
instances never answer each other in a loop.

A forced reload binds only the version it produced: an instance that hears an
announcement marked forced skips the held-roles check only if its own files give that
very version (the roles are held in the shared store, so every instance would otherwise
refuse what the person with the ``policy``/``reload`` permission decided).

**On start** an instance reads the announcement (when its subscription to the channel is
confirmed, and again after every reconnection, since announcements may have been missed
meanwhile). When nothing is announced yet it announces its own version, but only then
(written only if absent, atomically): a new deployment gets its reference without anyone
reloading, so an instance started later with other files is caught, while an instance
restarting with stale files can never overwrite the version a reload announced. A rolling
deployment that changes the files is therefore followed by one reload, which announces.

**One reload at a time.** Reloads run under one lock per process. A request arriving
while one runs does not start its own at once, nor is it refused: it joins the *next*
reload, which starts when the running one ends, so that it sees files at least as new as
its request. Every request that arrives meanwhile joins that same next one. However many
requests a flood sends, at most one reload runs, and one waits per kind (unforced,
forced, following an announcement); each caller gets the outcome of the reload it joined
(its version or its refusal). The reload runs as a task
of its own, so a caller that goes away does not cancel it half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..background import stop_task
from ..errors import ConfigError, StoreUnavailable
from ..store import PolicyAnnouncement
from .files import Policy, policy_file_paths, read_bounded, read_policy_file

log = logging.getLogger("keygate.policy")

T = TypeVar("T")

# A refusal names at most this many accounts (the message fewer), so an answer stays
# small in a deployment of a hundred thousand accounts; the totals are always exact.
MAX_HELD_ACCOUNTS = 1000
MAX_ACCOUNTS_IN_MESSAGE = 5

HOLDERS_UNKNOWN = ("the store is unreachable, so it cannot say which keys hold the roles "
                   "the new policy drops")

_LOCATED = re.compile(r"^policy (?P<file>[^,]+), line (?P<line>\d+): (?P<reason>.*)$", re.S)


class PolicyInvalid(Exception):
    """The candidate policy does not load: ``message`` says where (``file:line`` for a
    policy file, which ``file`` and ``line`` also hold) and why."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    @classmethod
    def from_config_error(cls, error: ConfigError) -> PolicyInvalid:
        text = str(error)
        found = _LOCATED.match(text)
        if found is None:  # the model, or the directory: no line to point at
            return cls(text)
        file, line = found["file"], int(found["line"])
        return cls(f"{file}:{line}: {found['reason']}", file, line)


class RolesStillHeld(Exception):
    """The candidate no longer defines roles that keys hold. ``held``: account → role →
    number of keys, for the removed roles only (at most ``MAX_HELD_ACCOUNTS`` accounts,
    ``accounts`` and ``keys`` are the full totals)."""

    def __init__(self, removed: tuple[str, ...], held: dict[str, dict[str, int]]):
        self.removed = removed
        self.accounts = len(held)
        self.keys = sum(sum(roles.values()) for roles in held.values())
        self.held = dict(list(held.items())[:MAX_HELD_ACCOUNTS])
        shown = "; ".join(
            f"{account}: " + ", ".join(f"{role} ×{count}" for role, count in roles.items())
            for account, roles in list(held.items())[:MAX_ACCOUNTS_IN_MESSAGE]
        )
        more = self.accounts - MAX_ACCOUNTS_IN_MESSAGE
        super().__init__(
            f"the new policy no longer defines {', '.join(map(repr, removed))}, still held "
            f"by {self.keys} key(s) in {self.accounts} account(s) ({shown}"
            f"{f'; and {more} more accounts' if more > 0 else ''}); take the roles off "
            "those keys first, or force the reload (POST /api/v1/policy/reload with "
            '{"force": true}; a signal or the file watch never forces)'
        )

    @property
    def truncated(self) -> bool:
        return len(self.held) < self.accounts


@dataclass(frozen=True)
class ReloadResult:
    """A reload that took effect: the version now serving, the one before, its lines,
    whether the store has it as the announced version, and whether it was forced past
    roles still held."""

    version: str
    previous: str
    lines: int
    announced: bool
    forced: bool


@dataclass(frozen=True)
class SyncStatus:
    """What ``/readyz`` and the metrics say. ``announced`` is None until the store has
    been read (or while it cannot be); ``in_sync`` is False only when an announced
    version is known and differs from the one serving."""

    version: str
    lines: int
    announced: str | None
    in_sync: bool
    loaded_at: int  # ms since the epoch
    # the last reload refused since the policy in force was loaded: this instance's
    # files (or the store's role holders) say something else than what it serves
    refused: RefusedReload | None = None


@dataclass(frozen=True)
class RefusedReload:
    """Why the last reload was refused (``code``, and the whole ``reason``, which names
    accounts and files: for the log and the caller who asked, not for an unauthenticated
    probe), when, and the version the files gave (None when they did not load)."""

    code: str  # policy_invalid, roles_still_held, store_unavailable
    reason: str
    at: int  # ms since the epoch
    version: str | None


class PolicyHolder(Protocol):
    """Where the serving policy lives (the authorizer): one reference, swapped whole."""

    policy: Policy


class AnnouncementStore(Protocol):
    """The store operations this module needs (``gateway.store.Store``)."""

    on_policy_announced: Callable[[], None] | None

    async def role_holders(self) -> dict[str, dict[str, int]]: ...

    async def announced_policy(self) -> PolicyAnnouncement | None: ...

    async def announce_policy(
        self, announcement: PolicyAnnouncement, only_if_none: bool = False
    ) -> bool: ...


def files_fingerprint(model_path: Path, policies_dir: Path) -> str | None:
    """A hash of the files a reload reads (the model and ``*.csv`` of the directory, by
    name and content), or None when they cannot be read. Content, not modification
    times: an edit within the same second and of the same size must count, and the files
    are small enough to read every poll, and read as the loader reads them (bounded,
    never out of the directory): a file linked to ``/dev/zero`` or a FIFO would
    otherwise fill the memory, or hang the poll and with it the shutdown."""
    digest = hashlib.sha256()
    try:
        digest.update(read_bounded(Path(model_path)))
        for path in policy_file_paths(policies_dir):
            digest.update(b"\x00" + path.name.encode() + b"\x00")
            digest.update(read_policy_file(path, policies_dir))
    except OSError:
        return None
    return digest.hexdigest()


class PolicySync:
    """Reloads, announcements and the comparison, for one process.

    ``holder`` serves the policy; ``instance`` names this process in announcements it
    makes without a caller (a signal, the file watch, the first one); ``reloaded`` hears
    every reload attempt's outcome (the metric); ``watch_interval`` > 0 polls the files.
    """

    def __init__(
        self,
        holder: PolicyHolder,
        store: AnnouncementStore,
        model_path: Path,
        policies_dir: Path,
        *,
        instance: str,
        clock: Callable[[], float] = time.time,
        watch_interval: float = 0.0,
        reloaded: Callable[[bool], None] = lambda ok: None,
        refused: Callable[[bool], None] = lambda refused: None,
    ):
        self.holder = holder
        self.store = store
        self.model_path = Path(model_path)
        self.policies_dir = Path(policies_dir)
        self.instance = instance
        self.clock = clock
        self.watch_interval = watch_interval
        self._reloaded = reloaded
        self._refused_changed = refused
        self.loaded_at = self._now_ms()
        self.announcement: PolicyAnnouncement | None = None
        self._lock = asyncio.Lock()
        self._next: dict[Hashable, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: tuple[str, str] | None = None  # (serving, announced) warned about
        self._last_refused: RefusedReload | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._closed = False
        store.on_policy_announced = self.heard

    # -- state -------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self.holder.policy

    def status(self) -> SyncStatus:
        policy = self.holder.policy
        announced = self.announcement.version if self.announcement is not None else None
        return SyncStatus(
            version=policy.version,
            lines=policy.lines,
            announced=announced,
            in_sync=announced is None or announced == policy.version,
            loaded_at=self.loaded_at,
            refused=self._last_refused,
        )

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the file watch (when on). Announcements are heard through the store's
        subscription, which calls :meth:`heard`."""
        if self.watch_interval > 0 and self._watcher is None:
            self._stopping.clear()
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        self._closed = True  # the store's listener may still call heard() until it stops
        if self._watcher is not None:
            await stop_task(self._watcher, self._stopping)
            self._watcher = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)

    # -- triggers ----------------------------------------------------------------------
    async def reload(self, *, force: bool = False, by: str = "",
                     asked: bool = True) -> ReloadResult:
        """Reload the files, swap the policy in and announce it (see the module's
        docstring). Raises :class:`PolicyInvalid`, :class:`RolesStillHeld`, or
        StoreUnavailable when the store cannot say who holds a role being removed; the
        old policy keeps serving then. Joins the next reload if one is running.
        ``asked``: someone asked (a signal, the API), so a reload whose files give the
        policy in force still counts as one; the file watch's (``asked=False``) does
        not — under ``--workers`` the watch of a worker that already followed another's
        announcement finds nothing new."""
        return await self._join(("reload", force, asked),
                                lambda: self._reload(force, by or self.instance, asked))

    def heard(self) -> None:
        """The announcement changed, or may have while the subscription was away: read
        it and follow it (from the store's listener; no I/O here)."""
        if not self._closed:
            self._join_later(("follow",), self._follow)

    # -- one at a time -----------------------------------------------------------------
    def _join_later(
        self, kind: Hashable, run: Callable[[], Awaitable[T]]
    ) -> asyncio.Future[T]:
        """The future of the next ``kind`` of work, started when the lock is free; work
        asked for while that one waits shares it."""
        future = self._next.get(kind)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            # a refusal nobody waited for (its caller went away) is no unhandled error
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._next[kind] = future
            task = asyncio.get_running_loop().create_task(self._run(kind, future, run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _join(self, kind: Hashable, run: Callable[[], Awaitable[T]]) -> T:
        return await asyncio.shield(self._join_later(kind, run))

    async def _run(
        self, kind: Hashable, future: asyncio.Future[T], run: Callable[[], Awaitable[T]]
    ) -> None:
        try:
            async with self._lock:
                # started: from now on, a new request must wait for a newer reload
                if self._next.get(kind) is future:
                    del self._next[kind]
                result = await run()
        except asyncio.CancelledError:
            if self._next.get(kind) is future:
                del self._next[kind]
            future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiter, who decides
            future.set_exception(exc)
        else:
            future.set_result(result)

    # -- the work ----------------------------------------------------------------------
    async def _load(self) -> Policy:
        try:
            return await asyncio.to_thread(Policy.load, self.model_path, self.policies_dir)
        except ConfigError as exc:
            raise PolicyInvalid.from_config_error(exc) from None
        except OSError as exc:  # a file replaced between the loader's checks and its read
            raise PolicyInvalid(f"cannot read the policy files ({exc.strerror})") from None

    async def _still_held(self, current: Policy, candidate: Policy) -> RolesStillHeld | None:
        """The roles ``candidate`` drops that keys still hold, or None. The store is read
        only when a role is dropped, which few reloads do."""
        removed = tuple(sorted(current.roles - candidate.roles))
        if not removed:
            return None
        held: dict[str, dict[str, int]] = {}
        for account, roles in (await self.store.role_holders()).items():
            counts = {role: n for role, n in roles.items() if role in removed and n > 0}
            if counts:
                held[account] = counts
        if not held:
            return None
        return RolesStillHeld(tuple(r for r in removed if any(r in c for c in held.values())),
                              held)

    def _files_accepted(self) -> None:
        """The files give a policy this instance serves now: no refusal stands."""
        if self._last_refused is not None:
            self._last_refused = None
            self._refused_changed(False)

    def _swap(self, candidate: Policy) -> str:
        previous = self.holder.policy.version
        self._files_accepted()
        self.holder.policy = candidate  # one reference: requests see old or new
        self.loaded_at = self._now_ms()
        self._reloaded(True)
        log.info("policy reloaded: version %s -> %s (%d lines)", previous, candidate.version,
                 candidate.lines, extra={"event": "policy.reloaded"})
        return previous

    def _refused(self, reason: object, version: str | None = None) -> None:
        code = ("policy_invalid" if isinstance(reason, PolicyInvalid) else
                "roles_still_held" if isinstance(reason, RolesStillHeld) else
                "store_unavailable")
        self._last_refused = RefusedReload(code, str(reason), self._now_ms(), version)
        self._refused_changed(True)
        self._reloaded(False)
        log.error("policy reload refused, keeping version %s: %s", self.holder.policy.version,
                  reason, extra={"event": "policy.refused"})

    async def _reload(self, force: bool, by: str, asked: bool = True) -> ReloadResult:
        current = self.holder.policy
        try:
            candidate = await self._load()
        except PolicyInvalid as exc:
            self._refused(exc)
            raise
        if not asked and candidate.version == current.version:
            # the watch saw files that give the policy in force (a comment edited, or a
            # change another worker's announcement brought in first): nothing to swap,
            # to log as a reload, to count, nor to ask the store about
            self._files_accepted()
            return ReloadResult(current.version, current.version, current.lines, False, False)
        try:
            held = await self._still_held(current, candidate)
        except StoreUnavailable:
            if not force:
                self._refused(HOLDERS_UNKNOWN, candidate.version)
                raise
            # forced anyway: a person decided, and an emergency must not wait for Redis
            log.warning("policy reload forced without knowing who holds the roles it "
                        "drops: %s", HOLDERS_UNKNOWN, extra={"event": "policy.forced"})
            forced = True
        else:
            if held is not None and not force:
                self._refused(held, candidate.version)
                raise held
            if held is not None:
                log.warning("policy reload forced: %s", held, extra={"event": "policy.forced"})
            forced = held is not None
        previous = self._swap(candidate)
        announcement = PolicyAnnouncement(candidate.version, by, self._now_ms(), forced)
        try:
            announced = await self.store.announce_policy(announcement)
        except StoreUnavailable:
            announced = False
            log.warning("policy %s is serving but could not be announced: the store is "
                        "unreachable", candidate.version, extra={"event": "policy.unannounced"})
        if announced:
            self._compare(announcement)
        else:
            self._compare(self.announcement)
        return ReloadResult(candidate.version, previous, candidate.lines, announced, forced)

    async def _follow(self) -> None:
        """Read the announcement (announcing ours when there is none yet); if it names
        another version, reload our files (forced only if the announcement was forced and
        our files give its version) and compare."""
        try:
            await self._follow_announcement()
        except Exception:  # noqa: BLE001 - nobody awaits a follow: say it here
            log.exception("following the policy announcement failed",
                          extra={"event": "policy.follow_failed"})

    async def _follow_announcement(self) -> None:
        try:
            announcement = await self.store.announced_policy()
            if announcement is None:
                ours = PolicyAnnouncement(self.holder.policy.version, self.instance,
                                          self._now_ms())
                if await self.store.announce_policy(ours, only_if_none=True):
                    log.info("announced policy version %s (none was announced yet)",
                             ours.version, extra={"event": "policy.announced"})
                    announcement = ours
                else:
                    announcement = await self.store.announced_policy()
        except StoreUnavailable:
            return  # the next subscription confirmed reads it again
        if announcement is not None and announcement.version != self.holder.policy.version:
            await self._reload_own_files(announcement)
        self._compare(announcement)

    async def _reload_own_files(self, announcement: PolicyAnnouncement) -> None:
        current = self.holder.policy
        try:
            candidate = await self._load()
            if candidate.version == current.version:
                self._files_accepted()
                return  # our files have not changed: nothing to reload, only to report
            forced = announcement.forced and candidate.version == announcement.version
            held = None if forced else await self._still_held(current, candidate)
        except PolicyInvalid as exc:
            self._refused(exc)
            return
        except StoreUnavailable:
            self._refused(HOLDERS_UNKNOWN, candidate.version)
            return
        if held is not None:
            self._refused(held, candidate.version)
            return
        self._swap(candidate)

    def _compare(self, announcement: PolicyAnnouncement | None) -> None:
        """Remember the announcement and say so when this instance serves another
        version: once per pair of versions, not at every announcement or poll."""
        self.announcement = announcement
        serving = self.holder.policy.version
        if announcement is None or announcement.version == serving:
            if self._warned is not None:
                log.info("policy in sync again: serving the announced version %s", serving,
                         extra={"event": "policy.in_sync"})
            self._warned = None
            return
        pair = (serving, announcement.version)
        if self._warned != pair:
            self._warned = pair
            log.warning(
                "policy out of sync: this instance serves version %s, the deployment "
                "announced %s (by %s); its policy files differ from those of the instance "
                "that announced", serving, announcement.version, announcement.by or "?",
                extra={"event": "policy.out_of_sync"},
            )

    async def _watch(self) -> None:
        """Poll the files every ``watch_interval`` seconds; a change reloads (and
        announces). A refused change is not retried until the files change again,
        except when the store was unreachable."""
        seen = await asyncio.to_thread(files_fingerprint, self.model_path, self.policies_dir)
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.watch_interval)
            if self._stopping.is_set():
                return
            now = await asyncio.to_thread(files_fingerprint, self.model_path,
                                          self.policies_dir)
            if now == seen:
                continue
            try:
                await self.reload(by=f"{self.instance} (file watch)", asked=False)
            except StoreUnavailable:
                continue  # retried at the next poll
            except (PolicyInvalid, RolesStillHeld):
                pass  # logged; waits for the next edit
            except Exception:  # noqa: BLE001 - the watch outlives a bug in one reload
                log.exception("policy file watch: reload failed",
                              extra={"event": "policy.watch_failed"})
            seen = now
