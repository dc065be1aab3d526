"""``keygate policy test | explain | diff``: the decision tables, the explanation of one
decision, and what a change does to every role (the analysis is ``gateway.policy``:
``tables``, ``explain``, ``diff``; this module reads the arguments and the store and
prints).

Exit statuses (``gateway.cli_policy``): ``test`` 0 when every row passes, 1 when one
fails or the policy files do not load, 2 when it cannot run (a table that is not one,
no tables); ``explain`` 0 whatever the decision, 1 for a key that holds no roles in the
account or policy files that do not load, 2 for a bad argument or an explanation past
its work limit; ``diff`` 0 whatever changed, 1 when a side does not load. Files that do
not load are what these commands find, as ``policy check`` does (1), not a wrong
command (2).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .cli_policy import DONE, FOUND, wants_json
from .cli_store import Refused, UsageError, on_store, print_json, settings_of, shown
from .credentials import is_valid_account
from .errors import ConfigError
from .policy import Policy
from .policy.table_runner import HeldRoles
from .settings import Settings

TABLES_DIR = "tests"
# steps 'policy explain' may take (the endpoint's limit is 1,000,000: it shares an
# event loop); a few seconds here, so that no question hangs a terminal or a CI job
MAX_CLI_EXPLAIN_WORK = 20_000_000


# -- what the policies are asked about besides their own names -------------------------
def route_permissions(settings: Settings) -> list[tuple[str, str]]:
    """The (resource, action) pairs the configured routes can ask about."""
    from .routes import parse_routes

    pairs = []
    for route in parse_routes(settings.routes).routes:
        actions = {route.action} if route.action else {"read", "write"}
        actions.update(route.actions.values())
        pairs.extend((route.resource, action) for action in sorted(actions))
    return pairs


def known_permissions(settings: Settings) -> list[tuple[str, str]]:
    """The management API's permissions and the routes': names a property over "every
    resource" must try even when no policy line spells them out."""
    from .management.common import MANAGEMENT_PERMISSIONS

    return [*MANAGEMENT_PERMISSIONS, *route_permissions(settings)]


def policies_dir_of(args: argparse.Namespace, settings: Settings) -> Path:
    given = getattr(args, "policies", None)
    directory = Path(given or settings.policies_dir)
    if not directory.is_dir():
        source = "--policies" if given else "setting policies_dir"
        raise UsageError(f"{source}: {shown(str(directory))} is not a directory")
    return directory


def load_policy(model_path: Path, policies_dir: Path, side: str = "") -> Policy:
    """The policy the command is about. Files that do not load are what these commands
    exist to find, as ``policy check`` finds them: exit 1 (refused), naming the file and
    line — not 2, which says the command or the deployment's config is wrong."""
    try:
        return Policy.load(model_path, policies_dir)
    except ConfigError as exc:
        raise Refused(f"{side}the policy does not load: {exc}") from None


def shown_path(path: Path, policies_dir: Path) -> str:
    """A table's name as rows print it: relative to the policy directory when inside."""
    try:
        return path.resolve().relative_to(policies_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _roles_of_keys(
    args: argparse.Namespace, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], HeldRoles]:
    """Each (key, account)'s roles and state, read from the configured store in one
    session."""
    from .key_roles import key_roles

    async def work(gateway: Any) -> dict[tuple[str, str], HeldRoles]:
        found = {}
        for app_key, account in pairs:
            held = await key_roles(gateway.store, gateway.fmt, app_key, account)
            if held is not None:
                found[(app_key, account)] = HeldRoles(held.roles, held.refusal)
        return found

    return on_store(args, work)


# -- keygate policy test ---------------------------------------------------------------
def cmd_policy_test(args: argparse.Namespace) -> int:
    from .policy.table_runner import render_text, run_tables
    from .policy.tables import TableError, keys_needed, load_table

    settings = settings_of(args)
    policies_dir = policies_dir_of(args, settings)
    policy = load_policy(settings.model_path, policies_dir)
    # tables named on the command line are the user's choice; those found in the
    # policy directory come with its files (a pull request) and must stay inside it
    found_in = None
    if args.files:
        paths = [Path(f) for f in args.files]
    else:
        found_in = policies_dir
        paths = sorted((policies_dir / TABLES_DIR).glob("*.toml"))
        if not paths:
            raise UsageError(
                f"no decision tables: {shown(str(policies_dir / TABLES_DIR))} holds no "
                "*.toml files (write tables there, or name them: keygate policy test FILE…)"
            )
    try:
        tables = [load_table(path, f"{TABLES_DIR}/{path.name}" if found_in else
                             shown_path(path, policies_dir), found_in) for path in paths]
    except TableError as exc:
        raise UsageError(str(exc)) from None
    needed = keys_needed(tables)
    held = _roles_of_keys(args, needed) if needed else {}
    report = run_tables(policy, tables, held, known_permissions(settings))
    if wants_json(args):
        print_json({"policy": {"version": policy.version}, **report.as_json()})
    else:
        print("\n".join(render_text(report)))
    return FOUND if report.failures else DONE


# -- keygate policy explain ------------------------------------------------------------
def cmd_policy_explain(args: argparse.Namespace) -> int:
    from .policy.delegation import assignment
    from .policy.explain import explain, question_problem, refused_first, render_text
    from .policy.reading import TooMuchWork, WorkMeter

    # an empty value is a mistake (an unset shell variable), never "not given": with
    # --key "" the answer would otherwise be about no key at all
    for option, value in (("--account", args.account), ("--resource", args.resource),
                          ("--action", args.action), ("--key", args.key)):
        if value == "":
            raise UsageError(f"{option} is empty")
    if args.roles is not None and "" in args.roles:
        raise UsageError("--role is empty")
    if not is_valid_account(args.account):
        raise UsageError(f"--account: {shown(args.account)} is not an account name "
                         "(lowercase letters, digits and '-')")
    problem = question_problem(args.roles or (), args.resource, args.action)
    if problem is not None:
        raise UsageError(problem)
    settings = settings_of(args)
    policy = load_policy(settings.model_path, policies_dir_of(args, settings))
    key = None
    if args.key is not None:
        from .key_roles import key_roles

        async def work(gateway: Any) -> Any:
            return await key_roles(gateway.store, gateway.fmt, args.key, args.account)

        key = on_store(args, work)
        if key is None:
            raise Refused(f"no API key {shown(args.key)} holds roles in account "
                          f"{args.account}")
        roles: Iterable[str] = key.roles
    else:
        roles = args.roles
    meter = WorkMeter(MAX_CLI_EXPLAIN_WORK)
    try:
        explanation = explain(policy, tuple(roles), args.account, args.resource,
                              args.action, meter)
        verdict = assignment(policy, explanation.roles, args.account, args.resource,
                             args.action, meter)
    except TooMuchWork as exc:
        raise UsageError(str(exc)) from None
    if key is not None and key.refusal is not None:
        explanation = refused_first(explanation, key.refusal)
    if wants_json(args):
        data = {**explanation.as_json(), "policy": {"version": policy.version}}
        if key is not None:
            data["key"] = key.as_json()
        if verdict is not None:
            data["assignment"] = verdict.as_json()
        print_json(data)
        return DONE
    lines = render_text(explanation)
    if key is not None:
        kind = "external key" if key.external else "key"
        lines.insert(1, f"{kind} {key.app_key} ({key.status}) holds "
                        f"{', '.join(key.roles) or 'no roles'} in {key.account}")
    if verdict is not None:
        lines.append(f"through the management API (edit on api-keys, then the escalation "
                     f"rule): {verdict.summary}")
        lines.extend("  " + m.describe() for m in verdict.lines)
    print("\n".join(lines))
    return DONE


# -- keygate policy diff ---------------------------------------------------------------
def cmd_policy_diff(args: argparse.Namespace) -> int:
    from .policy.diff import diff_policies, render_text

    for what, directory in (("OLD", args.old), ("NEW", args.new)):
        if not Path(directory).is_dir():
            raise UsageError(f"{what}: {shown(directory)} is not a directory")
    settings = settings_of(args)
    sides = []
    for what, directory in (("OLD", args.old), ("NEW", args.new)):
        # the error names the file and line; say which side it is
        sides.append(load_policy(settings.model_path, Path(directory),
                                 f"{what} ({shown(directory)}): "))
    diff = diff_policies(sides[0], sides[1], known_permissions(settings))
    if wants_json(args):
        print_json({"old": {"directory": args.old, "version": diff.old_version},
                    "new": {"directory": args.new, "version": diff.new_version},
                    **{k: v for k, v in diff.as_json().items() if k not in ("old", "new")}})
    else:
        print("\n".join(render_text(diff, args.old, args.new)))
    return DONE
