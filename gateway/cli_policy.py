"""``keygate policy check | test | explain | diff``: the security team's commands over
the policy files (``gateway.policy``). ``check`` is here; ``test``, ``explain`` and
``diff`` are in ``gateway.cli_policy_tools``.

Exit statuses as every command's (``gateway.cli``); for ``check`` and ``test``, 1 means
an error was found (a failing row, an error-level finding), 2 that the command could not
run (no such directory, a bad argument, a config that does not load).
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_store import print_json, settings_of

DONE, FOUND, BAD_USAGE = 0, 1, 2


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format text|json`` (``--json`` is short for ``--format json``)."""
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output: text for people, json for CI annotations")


def wants_json(args: argparse.Namespace) -> bool:
    return args.format == "json" or bool(getattr(args, "json", False))


def add_policy_commands(sub: Any, command: Any) -> None:
    policy = sub.add_parser("policy", help="policy files: check, test, explain, diff")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    check = command(policy_sub, "check", cmd_policy_check,
                    "lint model.conf, the policy files and the config's routes")
    add_format_option(check)
    check.add_argument("directory", nargs="?", metavar="DIR",
                       help="policy directory (default: the policies_dir setting)")
    check.add_argument("--store", action="store_true",
                       help="also report roles held by keys or grants in the configured "
                            "store that the files do not define")

    test = command(policy_sub, "test", run_tool("cmd_policy_test"),
                   "run decision tables (TOML) against the policy files")
    add_format_option(test)
    test.add_argument("files", nargs="*", metavar="FILE",
                      help="decision tables (default: DIR/tests/*.toml of policies_dir)")
    test.add_argument("--policies", metavar="DIR",
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
    explain.add_argument("--policies", metavar="DIR",
                         help="policy directory (default: the policies_dir setting)")

    diff = command(policy_sub, "diff", run_tool("cmd_policy_diff"),
                   "what changes for every role between two policy directories")
    add_format_option(diff)
    diff.add_argument("old", metavar="OLD", help="policy directory before the change")
    diff.add_argument("new", metavar="NEW", help="policy directory after the change")


def run_tool(name: str) -> Any:
    """A command of ``gateway.cli_policy_tools``, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from . import cli_policy_tools

        return int(getattr(cli_policy_tools, name)(args))

    return run


def cmd_policy_check(args: argparse.Namespace) -> int:
    """The policy files and the routes of the config: what ``serve`` would refuse."""
    from .policy import Policy
    from .routes import parse_routes

    settings = settings_of(args)
    policy = Policy.load(settings.model_path, args.directory or settings.policies_dir)
    routes = parse_routes(settings.routes)
    names = [route.name for route in routes.routes]
    if wants_json(args):
        print_json({"policy": {"lines": policy.lines, "version": policy.version,
                               "roles": sorted(policy.roles)},
                    "routes": names})
        return DONE
    print(f"policy OK: {policy.lines} lines, version {policy.version}")
    print(f"roles: {', '.join(sorted(policy.roles))}")
    print(f"routes OK: {len(names)}" + (f" ({', '.join(names)})" if names else ""))
    return DONE
