"""``keygate serve | demo | keys … | external-keys … | jwt rotate | settings … | audit | export |
policy …``: the parser, the exit statuses, and the commands that run a server or
only read files. The commands that work on the store are in ``gateway.cli_store``.

Exit statuses, the same for every command (scripts branch on them): 0 done; 1 refused,
or what the command names does not exist; 2 bad configuration or usage. Errors go to
standard error as one ``keygate: …`` line, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from . import cli_store as store_commands
from .cli_arguments import account_name, config_file, path, port_number, positive_count
from .cli_policy import add_policy_commands
from .cli_store import Refused, UsageError, settings_of, wants_json
from .cli_store_copy import COPY_TARGET_ENV, store_copy, target_url
from .errors import ConfigError, GatewayError
from .logs import configure_logging
from .process import run_event_loop
from .settings import reference_markdown

__all__ = ["build_parser", "configure_logging", "main", "run_event_loop"]

DONE, REFUSED, BAD_USAGE = 0, 1, 2
INTERRUPTED = 130  # the shell's convention for SIGINT

EXIT_STATUSES = """\
exit status:
  0  done
  1  refused, or what the command names does not exist (no such key, a renewal
     already pending, …); also when the store failed while the command ran, and
     for the policy commands, policy files that do not load
  2  bad configuration or usage (a setting, a store that does not answer at start,
     a policy or route for serve, an argument)
"""


# -- commands that run a server or read files ------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .app import run_workers, serve

    if args.workers < 1:
        raise UsageError("--workers: give 1 or more worker processes")
    settings = settings_of(args)
    if args.workers > 1:
        return run_workers(settings, args.workers, args.config)
    run_event_loop(serve(settings))
    return DONE


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_CONFIG, DemoPorts, run_demo

    args.config = args.config or str(DEMO_CONFIG)
    settings = settings_of(args)
    ports = DemoPorts(args.upstream_port, args.proxy_port, args.management_port,
                      args.metrics_port)
    run_event_loop(run_demo(settings, ports))
    return DONE


def cmd_settings_reference(args: argparse.Namespace) -> int:
    print(reference_markdown())
    return DONE


# -- the parser ------------------------------------------------------------------------
def _version() -> str:
    try:
        return version("keygate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


class Parser(argparse.ArgumentParser):
    """argparse's parser (its subparsers are of the same class), whose usage errors also
    print the JSON error document when the command line asked for JSON: a CI step that
    parses the output gets one for a missing option too (exit 2, as argparse's)."""

    argv: list[str] = []  # the command line being parsed (set by main)

    def error(self, message: str) -> NoReturn:
        argv = Parser.argv
        wants = "--json" in argv or "--format=json" in argv or any(
            a == "--format" and b == "json" for a, b in zip(argv, argv[1:], strict=False))
        if wants:
            print(json.dumps({"error": {"message": f"{self.prog}: {message}",
                                        "exitStatus": BAD_USAGE}}))
        super().error(message)


def command_group(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command of actions (``keys``, ``policy``, …), or with ``sub`` an action's
    parent, one command: its help names the exit statuses, and ``--config`` may come
    after it too (``keygate keys --config F list``, ``keygate policy check --config F``;
    not given there, the one before the command, or $KEYGATE_CONFIG, stands)."""
    made: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--config", type=config_file, default=argparse.SUPPRESS,
                      help="TOML config file (as before the command)")
    return made


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="keygate", description="Authorization gateway for API keys.",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=config_file, default=os.environ.get("KEYGATE_CONFIG"),
        help="TOML config file (default: $KEYGATE_CONFIG; settings also come from KEYGATE_*)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument("--version", action="version", version=f"keygate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, func: Any, help_text: str, *, json: bool = True,
                **defaults: Any) -> argparse.ArgumentParser:
        made = command_group(parent, name, help_text)
        if json:
            made.add_argument("--json", action="store_true", help="print JSON")
        made.set_defaults(func=func, **defaults)
        return made

    serve = command(sub, "serve", cmd_serve, "run the proxy and the management API",
                    json=False)
    serve.add_argument(
        "--workers", type=int, default=1,
        help="processes sharing the ports (SO_REUSEPORT); each keeps its own caches",
    )

    demo = command(sub, "demo", cmd_demo,
                   "run keygate on memory:// in front of an echo upstream", json=False)
    demo.add_argument("--upstream-port", type=port_number, default=9000,
                      help="the echo upstream's port (default 9000; 0: any free port)")
    demo.add_argument("--proxy-port", type=port_number,
                      help="the proxy's port (default: proxy_listen, 8080)")
    demo.add_argument("--management-port", type=port_number,
                      help="the management API's port (default: management_listen, 8081)")
    demo.add_argument("--metrics-port", type=port_number,
                      help="serve /metrics on this port (default: off, unless "
                           "metrics_listen is configured)")

    _add_key_commands(sub, command)
    _add_external_key_commands(sub, command)

    jwt = command_group(sub, "jwt", "the JWT signing keys of sessions and identity tokens")
    jwt_sub = jwt.add_subparsers(dest="jwt_command", required=True, metavar="ACTION")
    rotate = command(jwt_sub, "rotate", store_commands.jwt_rotate,
                     "add a new signing key, published now and signing once verifiers' "
                     "JWKS caches have it (5 minutes and jwt_leeway); the previous one "
                     "signs until then and verifies until its tokens expire")
    rotate.add_argument("--now", action="store_true",
                        help="sign with the new key at once (the current one is believed "
                             "leaked); upstreams refuse identity tokens until they fetch "
                             "the JWKS again")
    # as the policy commands' (cli_policy.add_format_option); --json stays
    rotate.add_argument("--format", choices=("text", "json"), default="text",
                        help="output: text for people, json for scripts (as --json)")

    settings = command(sub, "settings", cmd_settings_reference,
                       "print the settings reference (Markdown), or an account's settings "
                       "(get, set)", json=False)
    settings_sub = settings.add_subparsers(dest="settings_command", metavar="ACTION")
    get = command(settings_sub, "get", store_commands.account_settings_get,
                  "an account's settings")
    get.add_argument("--account", required=True, type=account_name)
    put = command(settings_sub, "set", store_commands.account_settings_set,
                  "change an account's settings")
    put.add_argument("--account", required=True, type=account_name)
    put.add_argument("--renewal-period-months", type=int, choices=(3, 6), required=True,
                     help="months after a token's creation before its renewal reminder")

    audit = command(sub, "audit", store_commands.audit,
                    "an account's audit events, newest first (--json: one object a line)")
    audit.add_argument("--account", required=True, type=account_name)
    audit.add_argument("--action", help="only this action, e.g. key.update")
    audit.add_argument("--limit", type=positive_count, default=50)

    export = command(sub, "export", store_commands.export,
                     "export an account's keys to XLSX or CSV")
    export.add_argument("--account", required=True, type=account_name)
    export.add_argument("--format", choices=("xlsx", "csv"), default="xlsx")
    export.add_argument("--sheet", choices=("generated", "external"),
                        help="CSV only: which sheet (default generated; XLSX holds both)")
    export.add_argument("-o", "--output", required=True, type=path, help="file to write")

    store = command_group(sub, "store", "the store's layout")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    command(store_sub, "migrate", store_commands.store_migrate,
            "build the indexes missing from accounts written by an older keygate "
            "(idempotent; keygate keeps serving meanwhile)")
    copy = command(store_sub, "copy", store_copy,
                   "copy the store into another, empty one — one server into a Redis "
                   "Cluster or back — renaming for its layout (stop keygate first)")
    copy.add_argument("--to", type=target_url, metavar="URL",
                      help="the target store's URL (redis://, redis+cluster://, …); "
                           f"default: the environment variable {COPY_TARGET_ENV}, which "
                           "keeps a password off the command line (any local user can "
                           "read a process's arguments)")

    add_policy_commands(sub, command)
    return parser


def _add_key_commands(sub: Any, command: Any) -> None:
    keys = command_group(sub, "keys", "an account's generated keys, in the store directly")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = command(keys_sub, "create", store_commands.keys_create,
                     "create a key and print its token once")
    create.add_argument("--account", required=True, type=account_name)
    create.add_argument("--label", required=True)
    create.add_argument("--role", action="append", default=[], help="repeat for several roles")
    listing = command(keys_sub, "list", store_commands.keys_list,
                      "list an account's generated keys")
    listing.add_argument("--account", required=True, type=account_name)
    for action in ("activate", "deactivate", "delete"):
        change = command(keys_sub, action, store_commands.keys_change, f"{action} a key",
                         action=action)
        change.add_argument("app_key", metavar="KEY")
    renew = command(keys_sub, "renew", store_commands.keys_renewal,
                    "issue a new token (the old one works until finish-renewal)",
                    command_name="renew")
    renew.add_argument("app_key", metavar="KEY")
    renew.add_argument("--now", action="store_true", help="the old token stops working at once")
    for name in ("finish-renewal", "undo-renewal"):
        end = command(keys_sub, name, store_commands.keys_renewal,
                      f"{name.replace('-', ' ')} of a key's token", command_name=name)
        end.add_argument("app_key", metavar="KEY")


def _add_external_key_commands(sub: Any, command: Any) -> None:
    external = command_group(
        sub, "external-keys", "roles an account grants to other accounts' keys, in the store"
    )
    external_sub = external.add_subparsers(dest="external_command", required=True,
                                           metavar="ACTION")
    listing = command(external_sub, "list", store_commands.external_list,
                      "the external keys of an account")
    listing.add_argument("--account", required=True, type=account_name)
    add = command(external_sub, "add", store_commands.external_add,
                  "grant roles in an account to another account's key")
    add.add_argument("--account", required=True, type=account_name,
                     help="the account that grants")
    add.add_argument("app_key", metavar="KEY")
    # the roles are what a grant is (the API's "roles" is required too); the label is not
    add.add_argument("--role", action="append", required=True,
                     help="required; repeat for several roles")
    add.add_argument("--label", help="optional")
    update = command(external_sub, "update", store_commands.external_update,
                     "change an external key's label, roles (--role replaces them all) "
                     "or status")
    update.add_argument("--account", required=True, type=account_name)
    update.add_argument("app_key", metavar="KEY")
    update.add_argument("--role", action="append", default=[], help="repeat for several roles")
    update.add_argument("--label")
    update.add_argument("--status", choices=("active", "inactive"))
    remove = command(external_sub, "remove", store_commands.external_remove,
                     "remove the grant (the key lives on in its owner account)")
    remove.add_argument("--account", required=True, type=account_name)
    remove.add_argument("app_key", metavar="KEY")


# where a policy file's error points: "policy a.csv, line 2: …" (gateway.policy.files)
_POLICY_LINE = re.compile(r"\bpolicy (?P<file>[^,\s]+), line (?P<line>\d+): ")


def _failed(args: argparse.Namespace, message: str, status: int) -> int:
    """One ``keygate: …`` line on standard error; and, when the command was asked for
    JSON, the error as a JSON document on standard output too (a CI step that parses the
    output gets a document whatever happened), with the policy file and line when the
    message names them."""
    print(f"keygate: {message}", file=sys.stderr)
    if wants_json(args):
        error: dict[str, Any] = {"message": message, "exitStatus": status}
        located = _POLICY_LINE.search(message)
        if located is not None:
            error.update(file=located["file"], line=int(located["line"]))
        print(json.dumps({"error": error}))
    return status


def main(argv: list[str] | None = None) -> int:
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # usage errors: argparse exits with 2
    configure_logging(args.verbose)  # until the settings say which log_format
    code: int | None = None
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone away is found here, not as the process exits
        return code
    except UsageError as exc:
        return _failed(args, str(exc), BAD_USAGE)
    except ConfigError as exc:
        return _failed(args, f"configuration error: {exc}", BAD_USAGE)
    except Refused as exc:
        return _failed(args, str(exc), REFUSED)
    except GatewayError as exc:  # the store failed while the command ran
        return _failed(args, exc.message, REFUSED)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`keygate policy diff … | head`): what it read is all it
        # wanted, not an error to show with a traceback. stdout goes to /dev/null so that
        # the interpreter's last flush does not fail on the closed pipe again. The status
        # is the command's when it had one, else 1: a check cut short passed nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1 if code is None else code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
