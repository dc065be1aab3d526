"""``keygate policy check | test | explain | diff``: the security team's commands over
the policy files (``gateway.policy``). ``check`` is here; ``test``, ``explain`` and
``diff`` are in ``gateway.cli_policy_tools``.

Exit statuses as every command's (``gateway.cli``); for ``check`` and ``test``, 1 means
an error was found (a failing row, an error-level finding), 2 that the command could not
run (no such directory, a bad argument, a config that does not load).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli_arguments import path
from .cli_store import (
    UsageError,
    print_json,
    settings_of,
    shared_store_settings,
    shown,
    wants_json,
)
from .errors import ConfigError
from .process import run_event_loop

DONE, FOUND, BAD_USAGE = 0, 1, 2


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format text|json`` (``--json`` is short for ``--format json``)."""
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output: text for people, json for CI annotations")


def add_policy_commands(sub: Any, command: Any) -> None:
    from .cli import command_group

    policy = command_group(sub, "policy", "policy files: check, test, explain, diff")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    check = command(policy_sub, "check", cmd_policy_check,
                    "lint model.conf, the policy files and the config's routes")
    add_format_option(check)
    check.add_argument("directory", nargs="?", metavar="DIR", type=path,
                       help="policy directory (default: the policies_dir setting)")
    check.add_argument("--store", action="store_true",
                       help="also report roles held by keys or grants in the configured "
                            "store that the files do not define")

    test = command(policy_sub, "test", run_tool("cmd_policy_test"),
                   "run decision tables (TOML) against the policy files")
    add_format_option(test)
    test.add_argument("files", nargs="*", metavar="FILE", type=path,
                      help="decision tables (default: DIR/tests/*.toml of policies_dir)")
    test.add_argument("--policies", metavar="DIR", type=path,
                      help="policy directory (default: the policies_dir setting)")

    explain = command(policy_sub, "explain", run_tool("cmd_policy_explain"),
                      "the decision for roles or a key, with the lines that made it")
    add_format_option(explain)
    explain.add_argument("--account", required=True)
    explain.add_argument("--resource", required=True)
    explain.add_argument("--action", required=True)
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--role", action="append", dest="roles", metavar="ROLE",
                     help="a role the caller holds (repeat for several)")
    who.add_argument("--key", metavar="APPKEY",
                     help="a key: its roles in --account, read from the configured store")
    explain.add_argument("--policies", metavar="DIR", type=path,
                         help="policy directory (default: the policies_dir setting)")

    diff = command(policy_sub, "diff", run_tool("cmd_policy_diff"),
                   "what changes for every role between two policy directories")
    add_format_option(diff)
    diff.add_argument("old", metavar="OLD", type=path,
                      help="policy directory before the change")
    diff.add_argument("new", metavar="NEW", type=path,
                      help="policy directory after the change")


def run_tool(name: str) -> Any:
    """A command of ``gateway.cli_policy_tools``, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from . import cli_policy_tools

        return int(getattr(cli_policy_tools, name)(args))

    return run


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Lint model.conf, the policy files and the config's routes
    (:mod:`gateway.policy.lint`); with ``--store``, also the roles keys and grants hold.
    Errors found: 1; warnings alone: 0; a config, directory or store that cannot be
    read: 2 (nothing was checked)."""
    from .management.common import MANAGEMENT_PERMISSIONS
    from .policy.lint import RouteUse, lint_policy
    from .routes import parse_routes

    settings = shared_store_settings(args) if args.store else settings_of(args)
    routes = [RouteUse.of(route) for route in parse_routes(settings.routes).routes]
    directory = Path(args.directory or settings.policies_dir)
    if args.directory and not directory.is_dir():
        raise UsageError(f"DIR: {shown(args.directory)} is not a directory")
    held = run_event_loop(_held_roles(settings)) if args.store else None
    report = lint_policy(Path(settings.model_path), directory, routes,
                         MANAGEMENT_PERMISSIONS, held)
    if wants_json(args):
        print_json(report.as_json())
    else:
        for line in _check_text(report):
            print(line)
    return FOUND if report.errors else DONE


ROLES_SHOWN = 50


def _check_text(report: Any) -> list[str]:
    """One line per finding (``file:line: severity: code: message``), what was
    checked, and a summary line."""
    lines = [f"{f.location}: {f.severity}: {f.code}: {f.message}" for f in report.findings]
    if report.version is not None and report.errors:  # it loads, yet an error stands
        lines.append(f"policy loads (see the errors above): {report.lines} lines, "
                     f"version {report.version}")
    elif report.version is not None:
        lines.append(f"policy OK: {report.lines} lines, version {report.version}")
    else:
        lines.append("policy: keygate would refuse these files (see the errors above)")
    roles = list(report.roles[:ROLES_SHOWN])
    if len(report.roles) > ROLES_SHOWN:
        roles.append(f"... ({len(report.roles) - ROLES_SHOWN} more)")
    lines.append(f"roles: {', '.join(roles)}")
    if report.routes:
        names = ", ".join(shown(name) for name in report.routes)
        lines.append(f"routes OK: {len(report.routes)} ({names})")
    else:
        lines.append("routes: none configured (resources and actions not checked against "
                     "routes)")
    if report.store_checked:
        lines.append("store: roles held by keys and grants checked")
    errors, warnings = report.errors, report.warnings
    lines.append(f"{errors} error{'' if errors == 1 else 's'}, "
                 f"{warnings} warning{'' if warnings == 1 else 's'}")
    return lines


async def _held_roles(settings: Any) -> dict[str, dict[str, int]]:
    """Account → role → keys and grants holding it, read from the configured store
    (the store alone: the configured policy may be the broken one being checked)."""
    from .errors import StoreUnavailable
    from .store import Store

    store = Store.from_url(settings.store_url, settings.store_prefix, max_connections=2)
    try:
        if not await store.ping():
            raise ConfigError("setting store_url: the store does not answer")
        return await store.role_holders()
    except StoreUnavailable:
        raise ConfigError("setting store_url: the store stopped answering") from None
    finally:
        await store.close()
