"""``keygate serve | demo | keys … | policy check | settings``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .errors import ConfigError, GatewayError
from .settings import Settings, load_settings, reference_markdown

log = logging.getLogger("keygate")


def run_event_loop(coro: Awaitable[Any]) -> Any:
    """uvloop when it is installed (it is a dependency), else asyncio's own loop."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        return asyncio.run(coro)  # type: ignore[arg-type]


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _shared_store_settings(args: argparse.Namespace) -> Settings:
    """Settings for a command that works on the store directly, beside a server."""
    settings = _settings(args)
    if settings.in_memory:
        raise ConfigError(
            "setting store_url: memory:// lives inside one keygate process, so this command "
            "cannot reach it; point store_url (or KEYGATE_STORE_URL) at the Redis that "
            "`keygate serve` uses, or try `keygate demo`"
        )
    return settings


def _key_row(record: Any, token: str | None = None, period: int = 3) -> dict[str, Any]:
    import time

    from .management.keys import key_json

    row = key_json(record, period, int(time.time() * 1000))
    if token is not None:
        row["appToken"] = token
    return row


async def _with_gateway(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    from .app import build_gateway

    gateway = build_gateway(settings)
    try:
        if not await gateway.store.ping():
            raise ConfigError(
                f"setting store_url: the store at {settings.store_url} does not answer"
            )
        return await work(gateway)
    finally:
        await gateway.close()


# -- commands ----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .app import run_workers, serve

    if args.workers < 1:
        raise ConfigError("--workers: give 1 or more worker processes")
    settings = _settings(args)
    if args.workers > 1:
        return run_workers(settings, args.workers, args.config)
    run_event_loop(serve(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_CONFIG, run_demo

    run_event_loop(run_demo(args.config or DEMO_CONFIG, args.upstream_port))
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from .credentials import is_valid_account
    from .lifecycle import checked_label
    from .store import CLI_ACTOR

    settings = _shared_store_settings(args)

    try:
        args.label = checked_label(args.label)
    except ValueError as exc:
        raise ConfigError(f"--label: {exc}") from None
    if not is_valid_account(args.account):
        raise ConfigError(
            f"--account: {args.account!r} is not an account name "
            "(lowercase letters, digits and '-', at most 63)"
        )

    async def work(gateway: Any) -> tuple[Any, str]:
        unknown = gateway.policy.unknown_roles(args.role)
        if unknown:
            raise ConfigError(f"--role: {unknown[0]!r} is not a role defined in the policies")
        issued = await gateway.lifecycle.create(args.account, args.label, args.role, CLI_ACTOR)
        return issued.record, issued.token

    record, token = run_event_loop(_with_gateway(settings, work))
    if args.json:
        print(orjson.dumps(_key_row(record, token)).decode())
    else:
        print(f"API key    {record.app_key}")
        print(f"API token  {token}")
        print(f"account    {record.account}   roles {', '.join(record.roles) or '(none)'}")
        print("The token is shown only this once; store it in your secret manager now.")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from .renewal import DEFAULT_RENEWAL_PERIOD
    from .store import KeyQuery

    settings = _shared_store_settings(args)

    async def work(gateway: Any) -> tuple[list[Any], int]:
        records, _ = await gateway.store.list_keys(
            args.account, KeyQuery(per_page=1_000_000, descending=False)
        )
        settings = await gateway.store.get_settings(args.account)
        return records, int(settings.get("renewalPeriodMonths", DEFAULT_RENEWAL_PERIOD))

    records, period = run_event_loop(_with_gateway(settings, work))
    rows = [_key_row(r, period=period) for r in records]
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    print(f"{'APP KEY':<32} {'STATUS':<9} {'CREATED':<25} {'ROLES':<40} LABEL")
    for row in rows:
        print(
            f"{row['appKey']:<32} {row['status']:<9} {row['creationDate']:<25} "
            f"{','.join(row['roles']):<40} {row['label']}"
        )
    return 0


def cmd_keys_change(args: argparse.Namespace) -> int:
    from .store import CLI_ACTOR

    settings = _shared_store_settings(args)
    account = _owner(settings, args.app_key)

    async def work(gateway: Any) -> bool:
        if args.action == "delete":
            return await gateway.store.delete_key(account, args.app_key, actor=CLI_ACTOR)
        status = "active" if args.action == "activate" else "inactive"
        changed = await gateway.store.update_key(
            account, args.app_key, actor=CLI_ACTOR, status=status
        )
        return changed is not None

    if not run_event_loop(_with_gateway(settings, work)):
        print(f"keygate: no API key {args.app_key} in account {account}", file=sys.stderr)
        return 1
    print(f"{args.app_key}: {args.action}d")
    return 0


def cmd_keys_renew(args: argparse.Namespace) -> int:
    from .store import CLI_ACTOR, RenewalRefused

    settings = _shared_store_settings(args)
    account = _owner(settings, args.app_key)

    async def work(gateway: Any) -> Any:
        if args.command_name == "renew":
            return await gateway.lifecycle.renew(
                account, args.app_key, CLI_ACTOR, keep_old=not args.now
            )
        return await gateway.store.end_renewal(
            account, args.app_key, finish=args.command_name == "finish-renewal", actor=CLI_ACTOR
        )

    try:
        result = run_event_loop(_with_gateway(settings, work))
    except RenewalRefused as refusal:
        what = "a renewal is pending: finish or undo it first" if refusal.reason == "pending" \
            else "the one-time link of the last token is still unopened"
        print(f"keygate: cannot renew {args.app_key}: {what}", file=sys.stderr)
        return 1
    if result is None:
        print(f"keygate: no API key {args.app_key} in account {account}", file=sys.stderr)
        return 1
    if result is False:
        print(f"keygate: no token renewal is pending for {args.app_key}", file=sys.stderr)
        return 1
    if args.command_name == "renew":
        print(f"API key    {args.app_key}")
        print(f"API token  {result.token}")
        if args.now:
            print("The old token no longer works.")
        else:
            print("Both tokens work until `keygate keys finish-renewal KEY`.")
    else:
        print(f"{args.app_key}: {args.command_name} done")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .management.audit import event_json

    settings = _shared_store_settings(args)

    async def work(gateway: Any) -> list[Any]:
        events, _ = await gateway.store.audit_events(
            args.account, limit=args.limit,
            accept=lambda e: not args.action or e.action == args.action,
        )
        return events

    for event in run_event_loop(_with_gateway(settings, work)):
        row = event_json(event)
        if args.json:
            print(orjson.dumps(row).decode())
        else:
            print(f"{row['time']}  {row['action']:<22} {row['target']:<28} by {row['actor']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import csv_chunks, write_xlsx

    settings = _shared_store_settings(args)
    target = Path(args.output)

    async def work(gateway: Any) -> None:
        if args.format == "xlsx":
            await write_xlsx(gateway.store, args.account, target)
            return
        with target.open("wb") as out:
            async for chunk in csv_chunks(gateway.store, args.account, args.sheet):
                out.write(chunk)

    run_event_loop(_with_gateway(settings, work))
    print(f"wrote {target}")
    return 0


def _owner(settings: Settings, app_key: str) -> str:
    account = settings.credential_format.key_account(app_key)
    if account is None:
        raise ConfigError(f"{app_key!r} is not an API key of this deployment")
    return account


def cmd_policy_check(args: argparse.Namespace) -> int:
    from .policy import Policy

    settings = _settings(args)
    policy = Policy.load(settings.model_path, settings.policies_dir)
    print(f"policy OK: {policy.lines} lines, version {policy.version}")
    print(f"roles: {', '.join(sorted(policy.roles))}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    print(reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keygate", description="Authorization gateway for API keys."
    )
    parser.add_argument(
        "--config", default=os.environ.get("KEYGATE_CONFIG"),
        help="TOML config file (default: $KEYGATE_CONFIG; settings also come from KEYGATE_*)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy and the management API")
    serve.add_argument(
        "--workers", type=int, default=1,
        help="processes sharing the ports (SO_REUSEPORT); each keeps its own caches",
    )
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run keygate on memory:// in front of an echo upstream")
    demo.add_argument("--upstream-port", type=int, default=9000)
    demo.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="manage keys directly in the store (bootstrap)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print its token once")
    create.add_argument("--account", required=True)
    create.add_argument("--label", required=True)
    create.add_argument("--role", action="append", default=[], help="repeat for several roles")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="list an account's generated keys")
    listing.add_argument("--account", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_keys_list)
    for action in ("activate", "deactivate", "delete"):
        change = keys_sub.add_parser(action, help=f"{action} a key")
        change.add_argument("app_key", metavar="KEY")
        change.set_defaults(func=cmd_keys_change, action=action)

    renew = keys_sub.add_parser("renew", help="issue a new token (old one kept until finish)")
    renew.add_argument("app_key", metavar="KEY")
    renew.add_argument("--now", action="store_true", help="the old token stops working at once")
    renew.set_defaults(func=cmd_keys_renew, command_name="renew")
    for name in ("finish-renewal", "undo-renewal"):
        end = keys_sub.add_parser(name, help=f"{name.replace('-', ' ')} of a key's token")
        end.add_argument("app_key", metavar="KEY")
        end.set_defaults(func=cmd_keys_renew, command_name=name)

    audit = sub.add_parser("audit", help="an account's audit events, newest first")
    audit.add_argument("--account", required=True)
    audit.add_argument("--action", help="only this action, e.g. key.update")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    export = sub.add_parser("export", help="export an account's keys to XLSX or CSV")
    export.add_argument("--account", required=True)
    export.add_argument("--format", choices=("xlsx", "csv"), default="xlsx")
    export.add_argument("--sheet", choices=("generated", "external"), default="generated",
                        help="CSV only: which sheet (XLSX holds both)")
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.set_defaults(func=cmd_export)

    policy = sub.add_parser("policy", help="policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate model.conf and policies/")
    check.set_defaults(func=cmd_policy_check)

    settings = sub.add_parser("settings", help="print the settings reference (Markdown)")
    settings.set_defaults(func=cmd_settings)
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pycasbin logs the whole model at INFO on every load
    logging.getLogger("casbin").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"keygate: configuration error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"keygate: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
