"""The commands that work on the store directly, beside a running keygate: ``keys``,
``external-keys``, ``settings get|set``, ``audit``, ``export``.

They act as the operator (the ``cli`` actor in the audit log), with no escalation
check: the command line is how the first key of an account comes to exist, and the
way out when the management API refuses (the last owner key). What they print and
what they accept is what the management API accepts: the views are ``gateway.views``,
and every change goes through ``gateway.lifecycle``, which checks labels, roles,
statuses and settings for both (its refusals become usage errors here, naming the flag).

Outcomes map to exit codes in ``gateway.cli``: :class:`Refused` (1) when the store says
no or what the command names does not exist, :class:`UsageError` (2) when an argument
is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ConfigError
from .process import run_event_loop
from .settings import Settings, load_settings, url_without_passwords

if TYPE_CHECKING:
    from .lifecycle import BadInput


class Refused(Exception):
    """The command was refused, or what it names does not exist: exit status 1."""


class UsageError(ConfigError):
    """An argument is wrong (the message names it): exit status 2."""


# -- plumbing --------------------------------------------------------------------------
def shown(value: str) -> str:
    """A value from the command line or the store, safe to print on a terminal: as it
    is when it is plain printable ASCII, else quoted with its escapes (no control
    sequence reaches the operator's terminal)."""
    return value if value.isascii() and value.isprintable() and value.strip() else repr(value)


def wants_json(args: argparse.Namespace) -> bool:
    """``--json`` or ``--format json``, whichever the command takes."""
    return getattr(args, "format", None) == "json" or bool(getattr(args, "json", False))


def print_json(data: Any) -> None:
    print(orjson.dumps(data).decode())


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings, and logging in their ``log_format`` from here on."""
    from .logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(args.verbose, settings.log_format)
    return settings


def shared_store_settings(args: argparse.Namespace) -> Settings:
    """Settings for a command that works on the store directly, beside a server."""
    settings = settings_of(args)
    if settings.in_memory:
        raise ConfigError(
            "setting store_url: memory:// lives inside one keygate process, so this command "
            "cannot reach it; point store_url (or KEYGATE_STORE_URL) at the Redis that "
            "`keygate serve` uses, or try `keygate demo`"
        )
    return settings


async def with_gateway(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    from .app import build_gateway

    gateway = build_gateway(settings)
    try:
        if not await gateway.store.ping():
            raise ConfigError(
                "setting store_url: the store at "
                f"{url_without_passwords(settings.store_url)} does not answer"
            )
        # as keygate serve does: a new store is recorded in this keygate's layout (else
        # a first `keys create` left a store that serve then calls unrecorded), and one
        # a later keygate migrated is not written by this one
        layout = await gateway.store.layout_at_start()
        if layout.newer:
            from .store import NewerLayout

            assert layout.store is not None
            raise Refused(f"{NewerLayout(layout.store)}; nothing was written")
        return await work(gateway)
    finally:
        await gateway.close()


def on_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[Any]]) -> Any:
    return run_event_loop(with_gateway(shared_store_settings(args), work))


def owner_of(settings: Settings, app_key: str) -> str:
    """The account a key belongs to, by its name; a name that is not one of this
    deployment's keys cannot exist here, so it is reported as such."""
    account = settings.credential_format.key_account(app_key)
    if account is None:
        raise Refused(f"no API key {shown(app_key)}")
    return account


# the flag each input the lifecycle checks comes from
FLAGS = {
    "label": "--label",
    "roles": "--role",
    "status": "--status",
    "renewalPeriodMonths": "--renewal-period-months",
}


def usage_error(refusal: BadInput) -> UsageError:
    """The lifecycle's refusal of an argument, as a usage error naming its flag."""
    from .lifecycle import UnknownRole

    if isinstance(refusal, UnknownRole):
        return UsageError(f"--role: {refusal.role!r} is not a role defined in the policies "
                          f"({', '.join(refusal.defined)})")
    flag = FLAGS.get(refusal.field)
    return UsageError(f"{flag}: {refusal}" if flag else str(refusal))


@contextlib.contextmanager
def arguments_checked() -> Iterator[None]:
    """Runs a lifecycle check or change; what it refuses of the arguments is a usage
    error (exit status 2)."""
    from .lifecycle import BadInput

    try:
        yield
    except BadInput as refusal:
        raise usage_error(refusal) from None


def checked_label(value: str | None) -> str | None:
    """``--label`` by the lifecycle's rule, checked before the store is reached."""
    from .lifecycle import checked_label as label_rule

    if value is None:
        return None
    with arguments_checked():
        return label_rule(value)


async def period_of(gateway: Any, account: str) -> int:
    from .views import renewal_period_months

    return renewal_period_months(await gateway.store.get_settings(account))


def key_row(record: Any, period: int, token: str | None = None) -> dict[str, Any]:
    from .views import key_json

    row = key_json(record, period, int(time.time() * 1000))
    if token is not None:
        row["appToken"] = token
    return row


def print_table(header: tuple[str, ...], widths: tuple[int, ...], rows: list[tuple]) -> None:
    def line(cells: tuple) -> str:
        padded = [f"{shown(str(c)):<{w}}" for c, w in zip(cells[:-1], widths, strict=False)]
        return " ".join([*padded, shown(str(cells[-1]))]).rstrip()

    print(line(header))
    for row in rows:
        print(line(row))


# -- keys ------------------------------------------------------------------------------
def keys_create(args: argparse.Namespace) -> int:
    from .store import CLI_ACTOR

    label = checked_label(args.label)

    async def work(gateway: Any) -> tuple[Any, str, int]:
        with arguments_checked():
            issued = await gateway.lifecycle.create(
                args.account, label, args.role, CLI_ACTOR, policy=gateway.policy
            )
        return issued.record, issued.token, await period_of(gateway, args.account)

    record, token, period = on_store(args, work)
    if args.json:
        print_json(key_row(record, period, token))
    else:
        print(f"API key    {record.app_key}")
        print(f"API token  {token}")
        print(f"account    {record.account}   roles {', '.join(record.roles) or '(none)'}")
        print("The token is shown only this once; store it in your secret manager now.")
    return 0


async def existing_account(gateway: Any, account: str) -> None:
    """Refused (exit 1) for an account keygate knows nothing of: a command that sets or
    exports an account's settings or keys must not bring a misspelt account into being
    (``keys create`` and ``external-keys add`` do that), nor answer its defaults or an
    empty workbook as if it were one. (The lists answer an empty list, exit 0: an
    account whose keys were all deleted is empty, not unknown.)"""
    if not await gateway.store.account_exists(account):
        raise Refused(f"no account {shown(account)} (it holds no keys, grants no external "
                      "keys and has no settings)")


def keys_list(args: argparse.Namespace) -> int:
    from .store import KeyQuery

    async def work(gateway: Any) -> tuple[list[Any], int]:
        records, _ = await gateway.store.list_keys(
            args.account, KeyQuery(per_page=1_000_000, descending=False)
        )
        return records, await period_of(gateway, args.account)

    records, period = on_store(args, work)
    rows = [key_row(r, period) for r in records]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ("APP KEY", "STATUS", "CREATED", "ROLES", "LABEL"), (32, 9, 25, 40),
        [(r["appKey"], r["status"], r["creationDate"], ",".join(r["roles"]), r["label"])
         for r in rows],
    )
    return 0


def keys_change(args: argparse.Namespace) -> int:
    """activate | deactivate | delete"""
    from .store import CLI_ACTOR

    settings = shared_store_settings(args)
    account = owner_of(settings, args.app_key)

    async def work(gateway: Any) -> Any:
        if args.action == "delete":
            return await gateway.lifecycle.delete(account, args.app_key, actor=CLI_ACTOR)
        status = "active" if args.action == "activate" else "inactive"
        record = await gateway.lifecycle.update(
            account, args.app_key, actor=CLI_ACTOR, policy=gateway.policy, status=status
        )
        return record and key_row(record, await period_of(gateway, account))

    result = run_event_loop(with_gateway(settings, work))
    if not result:
        raise Refused(f"no API key {shown(args.app_key)} in account {account}")
    if args.json:
        print_json({"appKey": args.app_key, "deleted": True} if result is True else result)
    else:
        print(f"{args.app_key}: {args.action}d")
    return 0


def keys_renewal(args: argparse.Namespace) -> int:
    """renew | finish-renewal | undo-renewal"""
    from .store import CLI_ACTOR, NoRenewalPending, RenewalPending, TokenLinkPending

    settings = shared_store_settings(args)
    account = owner_of(settings, args.app_key)
    renew = args.command_name == "renew"

    async def work(gateway: Any) -> tuple[Any, int]:
        if renew:
            result = await gateway.lifecycle.renew(
                account, args.app_key, CLI_ACTOR, keep_old=not args.now
            )
        else:
            result = await gateway.lifecycle.end_renewal(
                account, args.app_key, finish=args.command_name == "finish-renewal",
                actor=CLI_ACTOR,
            )
        return result, await period_of(gateway, account)

    try:
        result, period = run_event_loop(with_gateway(settings, work))
    except RenewalPending:
        raise Refused(f"cannot renew {args.app_key}: a renewal is pending: finish or undo "
                      "it first") from None
    except TokenLinkPending:
        raise Refused(f"cannot renew {args.app_key}: the one-time link of the last token is "
                      "still unopened") from None
    except NoRenewalPending:
        raise Refused(f"no token renewal is pending for {args.app_key}") from None
    if result is None:
        raise Refused(f"no API key {args.app_key} in account {account}")
    if args.json:
        print_json(key_row(result.record, period, result.token) if renew
                   else key_row(result, period))
    elif renew:
        print(f"API key    {args.app_key}")
        print(f"API token  {result.token}")
        if args.now:
            print("The old token no longer works.")
        else:
            print("Both tokens work until `keygate keys finish-renewal KEY`.")
    else:
        print(f"{args.app_key}: {args.command_name} done")
    return 0


# -- external keys ---------------------------------------------------------------------
def _not_granted(app_key: str, account: str) -> Refused:
    return Refused(f"{shown(app_key)} is not an external key of account {account}")


def external_list(args: argparse.Namespace) -> int:
    from .views import external_json

    async def work(gateway: Any) -> list[Any]:
        return await gateway.store.all_grants(args.account)

    grants = sorted(on_store(args, work), key=lambda x: (x.added, x.app_key))
    rows = [external_json(x) for x in grants]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ("APP KEY", "STATUS", "OWNER", "ADDED", "ROLES", "LABEL"), (32, 9, 20, 25, 40),
        [(r["appKey"], r["status"], r["account"], r["addedDate"], ",".join(r["roles"]),
          r["label"]) for r in rows],
    )
    return 0


def external_add(args: argparse.Namespace) -> int:
    from .store import CLI_ACTOR, GrantExists, KeyNotFound, OwnKey
    from .views import external_json

    settings = shared_store_settings(args)
    owner_of(settings, args.app_key)
    label = checked_label(args.label)

    async def work(gateway: Any) -> Any:
        with arguments_checked():
            return await gateway.lifecycle.add_external(
                args.account, args.app_key, label, args.role, CLI_ACTOR, policy=gateway.policy
            )

    try:
        grant = run_event_loop(with_gateway(settings, work))
    except KeyNotFound:
        raise Refused(f"no API key {args.app_key}") from None
    except OwnKey:
        raise Refused(
            f"{args.app_key} belongs to account {args.account} itself; its roles there are "
            "its own (`keygate keys`), not an external grant"
        ) from None
    except GrantExists:
        raise Refused(
            f"{args.app_key} is already an external key of account {args.account}; "
            "change it with `keygate external-keys update`"
        ) from None
    row = external_json(grant)
    if args.json:
        print_json(row)
    else:
        print(f"{args.app_key}: external key of account {args.account} "
              f"(owner {row['account']}), roles {', '.join(row['roles']) or '(none)'}")
    return 0


def external_update(args: argparse.Namespace) -> int:
    from .lifecycle import BadInput, checked_changes
    from .store import CLI_ACTOR
    from .views import external_json

    settings = shared_store_settings(args)
    owner_of(settings, args.app_key)
    given = {"label": args.label, "roles": args.role or None, "status": args.status}
    try:
        # before the store is reached; the roles meet the policies in the change itself
        changes = checked_changes({k: v for k, v in given.items() if v is not None})
    except BadInput as refusal:
        if refusal.code == "empty_change":
            raise UsageError(
                "external-keys update: give at least one of --label, --role, --status"
            ) from None
        raise usage_error(refusal) from None

    async def work(gateway: Any) -> Any:
        with arguments_checked():
            return await gateway.lifecycle.update_external(
                args.account, args.app_key, changes, CLI_ACTOR, policy=gateway.policy
            )

    updated = run_event_loop(with_gateway(settings, work))
    if updated is None:
        raise _not_granted(args.app_key, args.account)
    row = external_json(updated)
    if args.json:
        print_json(row)
    else:
        print(f"{args.app_key}: updated in account {args.account} ({row['status']}, roles "
              f"{', '.join(row['roles']) or '(none)'})")
    return 0


def external_remove(args: argparse.Namespace) -> int:
    from .store import CLI_ACTOR

    settings = shared_store_settings(args)
    owner_of(settings, args.app_key)

    async def work(gateway: Any) -> bool:
        return await gateway.lifecycle.remove_external(args.account, args.app_key, CLI_ACTOR)

    if not run_event_loop(with_gateway(settings, work)):
        raise _not_granted(args.app_key, args.account)
    if args.json:
        print_json({"appKey": args.app_key, "account": args.account, "removed": True})
    else:
        print(f"{args.app_key}: no longer an external key of account {args.account}")
    return 0


# -- account settings, audit, export ---------------------------------------------------
def account_settings_get(args: argparse.Namespace) -> int:
    from .views import account_settings_json

    async def work(gateway: Any) -> dict[str, Any]:
        await existing_account(gateway, args.account)
        return account_settings_json(await gateway.store.get_settings(args.account))

    _print_account_settings(args, on_store(args, work))
    return 0


def account_settings_set(args: argparse.Namespace) -> int:
    from .store import CLI_ACTOR
    from .views import account_settings_json

    async def work(gateway: Any) -> dict[str, Any]:
        await existing_account(gateway, args.account)
        with arguments_checked():
            await gateway.lifecycle.put_setting(
                args.account, "renewalPeriodMonths", args.renewal_period_months, CLI_ACTOR
            )
        return account_settings_json(await gateway.store.get_settings(args.account))

    _print_account_settings(args, on_store(args, work))
    return 0


def _print_account_settings(args: argparse.Namespace, values: dict[str, Any]) -> None:
    if args.json:
        print_json(values)
    else:
        print(f"account {args.account}: renewal reminder after "
              f"{values['renewalPeriodMonths']} months (renewalPeriodMonths)")


def audit(args: argparse.Namespace) -> int:
    from .views import event_json

    async def work(gateway: Any) -> list[Any]:
        events, _ = await gateway.store.audit_events(
            args.account, limit=args.limit,
            accept=lambda e: not args.action or e.action == args.action,
        )
        return events

    for event in on_store(args, work):
        row = event_json(event)
        if args.json:
            print_json(row)  # one object per line: the listing can be long
        else:
            print(f"{row['time']}  {row['action']:<22} {shown(row['target']):<28} "
                  f"by {shown(row['actor'])}")
    return 0


def export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import csv_chunks, write_xlsx

    target = Path(args.output)
    if args.sheet is not None and args.format != "csv":
        raise UsageError("--sheet: CSV only (the XLSX workbook holds both sheets)")
    sheet = args.sheet or "generated"

    async def work(gateway: Any) -> None:
        await existing_account(gateway, args.account)  # before a file is made
        # opened first, whatever the format: a target that cannot be written is said
        # before the export's work (xlsxwriter would only find out as it closes, with an
        # exception of its own)
        with target.open("wb") as out:
            if args.format == "xlsx":
                await write_xlsx(gateway.store, args.account, out)
                return
            async for chunk in csv_chunks(gateway.store, args.account, sheet):
                out.write(chunk)

    try:
        on_store(args, work)
    except OSError as exc:
        raise UsageError(f"--output: cannot write {shown(str(target))} ({exc.strerror})") from None
    if args.json:
        print_json({"account": args.account, "format": args.format, "file": str(target)})
    else:
        print(f"wrote {target}")
    return 0


def jwt_rotate(args: argparse.Namespace) -> int:
    """A new JWT signing key, announced on the invalidation channel: every instance
    publishes it in the JWKS at once and signs with it from ``signsFrom`` (at once with
    ``--now``, or when no previous key opens), and the previous key signs until then and
    verifies until every token it signed has expired: ``previousVerifiesUntil``, its
    last signing time plus the longest token lifetime (``session_ttl``,
    ``identity_token_ttl``) and ``jwt_leeway``, when keygate drops it from the JWKS.

    Keys loaded from ``jwt_private_key_files`` are refused (exit 1: the operator rotates
    them by changing the list); a file that does not load is a configuration error
    (exit 2), as for ``serve``."""

    from .sessions.service import SigningKeysUnavailable
    from .views import iso

    async def work(gateway: Any) -> dict[str, Any]:
        sessions = gateway.sessions
        if sessions.from_files:
            raise Refused("the JWT signing keys come from jwt_private_key_files: rotate "
                          "by changing that list")
        try:
            previous = (await sessions.ready()).current.kid
        except SigningKeysUnavailable:  # no stored key opens: the way out is a new one
            previous = None
        new = await sessions.rotate(at_once=args.now)
        # the previous key as stored after the rotation: it stops signing at its
        # ``retired`` (the new key's start, or earlier when a rotation was pending)
        # and its last token is dead max_lifetime after that
        old = sessions.ring.keys.get(previous) if previous and sessions.ring else None
        return {"kid": new.kid, "algorithm": new.algorithm, "previous": previous,
                "signsFrom": iso(new.starts * 1000),
                "previousSignsUntil": iso(old.retired * 1000) if old else None,
                "previousVerifiesUntil": (iso((old.retired + sessions.max_lifetime) * 1000)
                                          if old else None),
                "keys": [key["kid"] for key in sessions.jwks()["keys"]]}

    rotated = on_store(args, work)
    if wants_json(args):
        print_json(rotated)
    elif rotated["previous"]:
        print(f"new signing key {rotated['kid']} ({rotated['algorithm']}), published now, "
              f"signs from {rotated['signsFrom']}; {rotated['previous']} signs until "
              f"{rotated['previousSignsUntil']} and verifies until "
              f"{rotated['previousVerifiesUntil']} (its last token expired: the longest "
              "token lifetime and jwt_leeway later); it may be dropped after that")
    else:
        print(f"new signing key {rotated['kid']} ({rotated['algorithm']}), published now, "
              f"signs from {rotated['signsFrom']}; no previous key opened with the server "
              "secret")
    return 0


def store_migrate(args: argparse.Namespace) -> int:
    from .store import LAYOUT, NewerLayout

    async def work(gateway: Any) -> dict[str, int]:
        return await gateway.store.migrate()

    try:
        listed = on_store(args, work)
    except NewerLayout as exc:
        raise Refused(f"{exc}; nothing was written") from None
    if args.json:
        print_json({"indexed": listed, "layout": LAYOUT})
        return 0
    if not listed:
        print("every account's indexes are complete")
    for account, count in sorted(listed.items()):
        print(f"account {account}: {count} keys indexed")
    print(f"the store's layout is {LAYOUT}, this keygate's")
    return 0
