"""Copying a store into another: from one server into a Redis Cluster (or back), whose
names differ (``names.py``: the cluster layout tags every name of an account with it).

Every name under the prefix is copied exactly — type, value and remaining TTL — with
``DUMP`` and ``RESTORE``, and renamed from the source's layout to the target's: a key's
hash by its key, an account's records by account, everything else (links, failure
counters, the policy record, the signing keys) as it is. Values hold no names but a
link's, and links keep theirs in both layouts. The copy is of a store at rest: stop
keygate (or every writer) first, since a change made during the copy may be missed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from .connection import CLIENT_FAILURES, client_from_url, is_cluster_client, lost_store
from .names import Keyspace, glob_escape


class TargetNotEmpty(Exception):
    """The target holds names under the prefix already: a copy would mix two stores."""

    def __init__(self, example: str):
        super().__init__(f"the target already holds {example!r} under the prefix; "
                         "copy into an empty store (or another store_prefix)")
        self.example = example


class CopyFailed(Exception):
    """The source or the target failed during the copy: unreachable, refused the
    credentials, or lost. The message says which, and what the client said of a
    connection (never a value: a failed write's message quotes what it wrote)."""

    def __init__(self, side: str, exc: BaseException):
        said = str(exc) if isinstance(exc, redis.exceptions.ConnectionError) else ""
        super().__init__(f"the {side} store failed during the copy ({type(exc).__name__}"
                         + (f": {said[:200]}" if said else "") + "); whatever was "
                         "copied stays in the target: empty it before copying again")
        self.side = side


@dataclass
class CopyReport:
    copied: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def _binary(url: str) -> Any:
    return client_from_url(url, 4, decode_responses=False)


def target_name(source: Keyspace, target: Keyspace, name: str) -> str:
    """``name`` of the source's layout, in the target's."""
    app_key = source.app_key_of(name)
    if app_key is not None:
        return target.key(app_key)
    record = source.account_record(name)
    if record is not None:
        return target.account(*record)
    return name


def _kind(source: Keyspace, name: str) -> str:
    if source.app_key_of(name) is not None:
        return "key"
    if source.account_record(name) is not None:
        return "account record"
    return "other"


async def copy_store(source_url: str, target_url: str, prefix: str,
                     chunk: int = 500) -> CopyReport:
    """Copy every name under ``prefix`` from ``source_url`` to ``target_url``.
    :class:`TargetNotEmpty` before anything is written when the target holds any;
    :class:`CopyFailed` when either store fails."""
    source_client, target_client = _binary(source_url), _binary(target_url)
    side = ["target"]  # the store the call in flight is made on (_copy_batch sets it)
    try:
        source = Keyspace(prefix, clustered=is_cluster_client(source_client))
        target = Keyspace(prefix, clustered=is_cluster_client(target_client))
        pattern = glob_escape(prefix) + "*"
        async for name in target_client.scan_iter(match=pattern.encode(), count=1000):
            raise TargetNotEmpty(name.decode("utf-8", "replace"))
        report = CopyReport()
        batch: list[bytes] = []
        side[0] = "source"
        async for name in source_client.scan_iter(match=pattern.encode(), count=1000):
            batch.append(name)
            if len(batch) >= chunk:
                await _copy_batch(source_client, target_client, source, target, batch, report,
                                  side)
                batch = []
                side[0] = "source"
        if batch:
            await _copy_batch(source_client, target_client, source, target, batch, report,
                              side)
        return report
    except CLIENT_FAILURES as exc:
        if isinstance(exc, redis.exceptions.RedisError) or lost_store(exc):
            raise CopyFailed(side[0], exc) from None
        raise
    finally:
        await source_client.aclose()
        await target_client.aclose()


async def _copy_batch(source_client: Any, target_client: Any, source: Keyspace,
                      target: Keyspace, names: list[bytes], report: CopyReport,
                      side: list[str]) -> None:
    side[0] = "source"
    async with source_client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.dump(name)
            pipe.pttl(name)
        found = await pipe.execute()
    side[0] = "target"
    async with target_client.pipeline(transaction=False) as pipe:
        for i, name in enumerate(names):
            payload, ttl = found[2 * i], found[2 * i + 1]
            if payload is None or ttl == -2:  # gone since the scan (a link expired)
                continue
            text = name.decode("utf-8")
            pipe.restore(target_name(source, target, text), max(ttl, 0), payload)
            kind = _kind(source, text)
            report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
            report.copied += 1
        try:
            await pipe.execute()
        except redis.exceptions.ResponseError as exc:
            if "BUSYKEY" in str(exc):  # written meanwhile: the target was not at rest
                # (the message quotes the RESTORE and its payload: not repeated)
                raise TargetNotEmpty("a name written there during the copy") from None
            raise
