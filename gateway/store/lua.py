"""The Lua scripts, read from ``scripts/*.lua`` (shipped as package data), and how they
are run and loaded on the store's nodes.

A script's text is the fragments it needs (the change prelude, the key or grant
helpers), then its own file; each file starts with the KEYS and ARGV it takes. A script
runs by its digest (EVALSHA). Every script is loaded (SCRIPT LOAD) on every node the
client knows before keygate serves (``Scripts.load``, from ``gateway.app.running``),
again when the nodes a cluster client knows change, and again when a node answers
NOSCRIPT (restarted, SCRIPT FLUSHed, a replica promoted by a failover that never had
them): one load on each node however many calls met NOSCRIPT at once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from .connection import CLIENT_FAILURES, is_cluster_client, lost_store

log = logging.getLogger("keygate.store")

_CHANGE = ("key_hash", "prelude")
_KEY = ("key_hash", "prelude", "status_runs", "byte_order", "packed", "key_rules")
_GRANT = ("key_hash", "prelude", "grant_snapshot")

# every script, and the fragments put before it
SCRIPTS: dict[str, tuple[str, ...]] = {
    "create_key": _KEY,
    "update_key": _KEY,
    "delete_key": _KEY,
    "index_owners": _KEY,
    "index_listing": _KEY,
    "index_zones": _KEY,
    "list_keys": ("key_hash", "status_runs", "byte_order", "packed"),
    "packed_index": ("byte_order", "packed"),
    "keys_at_date": ("status_runs", "byte_order", "packed"),
    "renew_token": _KEY,
    "end_renewal": _KEY,
    "add_grant": _GRANT,
    "update_grant": _GRANT,
    "remove_grant": _GRANT,
    "apply_followup": _CHANGE,
    "clear_followup": (),
    "open_link": _CHANGE,
    "forget_link": (),
    "put_setting": _CHANGE,
    "record_last_used": ("byte_order", "packed"),
    "end_session": (),
    "announce_policy": (),
    "write_signing_keys": (),
}


@functools.cache
def _read(name: str) -> str:
    return files(__package__).joinpath("scripts", f"{name}.lua").read_text(encoding="utf-8")


def constant(fragment: str, name: str) -> int:
    """An integer a script fragment defines (``local NAME = 123``), for Python code that
    reads what the scripts write: one definition for both."""
    found = re.search(rf"^local {name} = (\d+)$", _read(fragment), re.MULTILINE)
    if found is None:
        raise LookupError(f"{fragment}.lua defines no {name}")
    return int(found[1])


def text_constant(fragment: str, name: str) -> str:
    """A string a script fragment defines (``local NAME = 'text'``), as :func:`constant`."""
    found = re.search(rf"^local {name} = '([^'\\]*)'$", _read(fragment), re.MULTILINE)
    if found is None:
        raise LookupError(f"{fragment}.lua defines no {name}")
    return found[1]


def source(name: str) -> str:
    """The full text of script ``name``, its fragments first."""
    return "\n".join([*(_read(f) for f in SCRIPTS[name]), _read(name)])


class Script:
    """One script, called as redis-py's registered scripts are (``keys=``, ``args=``).

    Not redis-py's own (``register_script``): that loads the script again on every
    NOSCRIPT — on a cluster, on every master — so nodes that lost the scripts (a
    restart, SCRIPT FLUSH, a replica promoted that never had them) under a burst of
    calls took a load per call and master. Here the calls that meet NOSCRIPT together
    wait for one load of every script on every node (``Scripts.reload``)."""

    def __init__(self, scripts: Scripts, text: str):
        self.scripts = scripts
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()  # Redis's own

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        scripts, client = self.scripts, self.scripts.client
        if scripts.nodes_changed():
            await scripts.reload()
        sent = scripts.loads  # loads begun before this call was sent
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await scripts.reload(unless_since=sent)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # the node missed the load (it did not answer, or was flushed since): the
            # script's text itself, which never meets NOSCRIPT (and caches it there)
            return await client.eval(self.text, len(keys), *keys, *args)


class Scripts:
    """Every script, for one client, and their loading on its nodes."""

    def __init__(self, client: aioredis.Redis):
        self.client = client
        self.clustered = is_cluster_client(client)
        # the cluster nodes (names) of the last load, whether each loaded or not: a load
        # is due again when the client knows other nodes (a failover, a node added)
        self.loaded_on: frozenset[str] | None = None
        self.loads = 0  # loads begun
        self._loading: asyncio.Future[bool] | None = None

        def register(name: str) -> Script:
            return Script(self, source(name))

        self.create_key = register("create_key")
        self.update_key = register("update_key")
        self.delete_key = register("delete_key")
        self.index_owners = register("index_owners")
        self.index_listing = register("index_listing")
        self.index_zones = register("index_zones")
        self.list_keys = register("list_keys")
        self.packed_index = register("packed_index")
        self.keys_at_date = register("keys_at_date")
        self.renew_token = register("renew_token")
        self.end_renewal = register("end_renewal")
        self.add_grant = register("add_grant")
        self.update_grant = register("update_grant")
        self.remove_grant = register("remove_grant")
        self.apply_followup = register("apply_followup")
        self.clear_followup = register("clear_followup")
        self.open_link = register("open_link")
        self.forget_link = register("forget_link")
        self.put_setting = register("put_setting")
        self.record_last_used = register("record_last_used")
        self.end_session = register("end_session")
        self.announce_policy = register("announce_policy")
        self.write_signing_keys = register("write_signing_keys")

    def all(self) -> list[Script]:
        return [getattr(self, name) for name in SCRIPTS]

    def nodes_changed(self) -> bool:
        """Whether the cluster client now knows nodes other than those of the last load
        (only the public ``get_nodes()``; empty before the client's discovery)."""
        if not self.clustered or self.loaded_on is None:
            return False
        nodes = self.client.get_nodes()  # type: ignore[attr-defined]
        return bool(nodes) and frozenset(node.name for node in nodes) != self.loaded_on

    async def load(self) -> bool:
        """SCRIPT LOAD every script on every node the client knows: on a cluster every
        master and replica (a replica promoted later has them already; scripts are not
        replicated), else the one server (for a sentinel-managed master, the current
        one). Whether every master loaded them; a node that did not answer is logged and
        skipped (a call that meets NOSCRIPT there loads them again)."""
        self.loads += 1
        if not self.clustered:
            return await self._load_on("the store", self.client.script_load)
        cluster: RedisCluster = self.client  # type: ignore[assignment]
        # the nodes are discovered once (the client keeps them until it meets a change)
        if not await _answered("the cluster", cluster.initialize()):
            return False
        nodes = cluster.get_nodes()
        self.loaded_on = frozenset(node.name for node in nodes)

        def on(node: Any) -> Any:
            return functools.partial(cluster.execute_command, "SCRIPT LOAD",
                                     target_nodes=node)

        loaded = await asyncio.gather(*(self._load_on(node.name, on(node)) for node in nodes))
        primaries = {node.name for node in cluster.get_primaries()}
        return all(ok for node, ok in zip(nodes, loaded, strict=True) if node.name in primaries)

    async def _load_on(self, where: str, script_load: Any) -> bool:
        async def each() -> None:
            # one script after the other: one connection of the node's pool at a time,
            # as a store call takes (the call gate counts on it)
            for script in self.all():
                await script_load(script.text)

        return await _answered(where, each())

    async def reload(self, unless_since: int | None = None) -> None:
        """:meth:`load`, shared: the calls that ask while a load runs wait for that one
        (a burst of NOSCRIPT is one load per node, not one per call). ``unless_since``:
        the loads begun when the caller's command was sent; if one began since and has
        ended, that command's NOSCRIPT came before it and nothing is loaded again.
        Shielded: a caller cancelled does not cancel the others' load."""
        if self._loading is None:
            if unless_since is not None and self.loads != unless_since:
                return
            self._loading = asyncio.ensure_future(self.load())
            self._loading.add_done_callback(self._loaded)
        await asyncio.shield(self._loading)

    def _loaded(self, loading: asyncio.Future[bool]) -> None:
        self._loading = None
        if not loading.cancelled():
            loading.exception()  # retrieved: each caller that waited has raised it


async def _answered(where: str, call: Any) -> bool:
    """Await ``call``: False (logged) when the store did not answer; a bug raises."""
    try:
        await call
    except CLIENT_FAILURES as exc:
        if not isinstance(exc, redis.exceptions.RedisError) and not lost_store(exc):
            raise
        log.warning("Lua scripts not loaded on %s: %s", where, exc)
        return False
    return True
