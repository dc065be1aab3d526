"""The command line's argument types: a bad value is a usage error (exit status 2, with
argparse's usage line and the argument's name) before anything runs.

An empty path is one: ``Path("")`` is the current directory, so ``--policies ""`` or
``policy diff "" NEW`` would read whatever directory the command ran in, and an option
that falls back to a setting when it is not given (``--policies``, ``policy check DIR``)
silently did so for an empty value as well.
"""

from __future__ import annotations

import argparse


def account_name(value: str) -> str:
    from .credentials import is_valid_account

    if not is_valid_account(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an account name (lowercase letters, digits and '-', at most 63)"
        )
    return value


def port_number(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0 to 65535)")
    return int(value)


def positive_count(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 100_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number from 1 to 100000")
    return int(value)


def path(value: str) -> str:
    """A file or directory: anything but empty (whether it exists is the command's to
    say, with what it expected there)."""
    if not value:
        raise argparse.ArgumentTypeError(
            "empty; give a path (for the current directory, write '.')")
    return value


def config_file(value: str) -> str:
    """``--config``, whose default is ``$KEYGATE_CONFIG``: argparse checks that default
    too, so an empty variable is the same usage error, and says so."""
    if not value:
        raise argparse.ArgumentTypeError(
            "empty; give the TOML config file's path, or leave both --config and "
            "KEYGATE_CONFIG out (an empty KEYGATE_CONFIG counts as an empty --config)")
    return value
