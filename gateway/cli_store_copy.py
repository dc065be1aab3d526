"""``keygate store copy --to URL``: copy the store named by the settings into another,
renamed for the target's layout (one server ↔ Redis Cluster; ``gateway.store.copy``)."""

from __future__ import annotations

import argparse
import os

from .cli_store import Refused, UsageError, print_json, shared_store_settings
from .process import run_event_loop
from .settings import store_url_setting, url_without_passwords
from .store.copy import CopyFailed, TargetNotEmpty, copy_store

# where the target's URL is read from when --to is not given
COPY_TARGET_ENV = "KEYGATE_COPY_TO"


def target_url(value: str) -> str:
    """The ``--to`` argument: a store URL as ``store_url`` takes it, but a real one."""
    try:
        url = store_url_setting(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if url.startswith("memory://"):
        raise argparse.ArgumentTypeError(
            "memory:// lives inside one process: copy into a Redis server or cluster")
    return url


def store_copy(args: argparse.Namespace) -> int:
    settings = shared_store_settings(args)
    if args.to is None:
        from_env = os.environ.get(COPY_TARGET_ENV, "")
        if not from_env:
            raise UsageError(f"name the target store: --to URL, or {COPY_TARGET_ENV}")
        try:
            args.to = target_url(from_env)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{COPY_TARGET_ENV}: {exc}") from None
    if args.to == settings.store_url:
        raise UsageError("--to names the store_url itself: copy into another store")
    try:
        report = run_event_loop(copy_store(settings.store_url, args.to, settings.store_prefix))
    except (TargetNotEmpty, CopyFailed) as exc:
        raise Refused(str(exc)) from None
    if args.json:
        print_json({"copied": report.copied, "byKind": report.by_kind})
    else:
        print(f"copied {report.copied} names from {url_without_passwords(settings.store_url)} "
              f"to {url_without_passwords(args.to)}: "
              + ", ".join(f"{n} {kind}" for kind, n in sorted(report.by_kind.items())))
    return 0
