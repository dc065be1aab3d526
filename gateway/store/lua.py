"""The Lua scripts, read from ``scripts/*.lua`` (shipped as package data) and registered
on a client.

A script's text is the fragments it needs (the change prelude, the key or grant
helpers), then its own file; each file starts with the KEYS and ARGV it takes. redis-py
runs a registered script by its digest (EVALSHA) and loads it on first use.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_CHANGE = ("prelude",)
_KEY = ("prelude", "status_runs", "key_rules")
_GRANT = ("prelude", "grant_snapshot")

# every script, and the fragments put before it
SCRIPTS: dict[str, tuple[str, ...]] = {
    "create_key": _KEY,
    "update_key": _KEY,
    "delete_key": _KEY,
    "index_owners": _KEY,
    "index_listing": _KEY,
    "index_zones": _KEY,
    "list_keys": ("status_runs", "byte_order"),
    "keys_at_date": ("status_runs", "byte_order"),
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
    "record_last_used": (),
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


class Scripts:
    """Every script, registered on one client."""

    def __init__(self, client: aioredis.Redis):
        def register(name: str) -> AsyncScript:
            return client.register_script(source(name))  # type: ignore[return-value]

        self.create_key = register("create_key")
        self.update_key = register("update_key")
        self.delete_key = register("delete_key")
        self.index_owners = register("index_owners")
        self.index_listing = register("index_listing")
        self.index_zones = register("index_zones")
        self.list_keys = register("list_keys")
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
