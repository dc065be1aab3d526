"""Every Redis name keygate uses, derived from the ``store_prefix`` setting.

Python code and scripts get their names from here only (a script receives them in
``KEYS`` or, where noted in the package's docstring, derives them from a prefix it is
given), so the two layouts differ in this one class:

* on one server (or a Sentinel-managed master) names carry no hash tag:
  ``kg:key:kgk-acme-7QX2M4PZ9B``, ``kg:acct:acme:created``;
* on a Redis Cluster (``clustered``) every name of an account — its indexes, audit
  streams, settings, and the hashes of the keys it owns — carries the account as its hash
  tag, so they all live in one slot and every change of a key is one script on one node:
  ``kg:key:{acme}:kgk-acme-7QX2M4PZ9B``, ``kg:acct:{acme}:created``. A key's owner is written
  in its name (``prefix-account-RANDOM``), so authentication finds the hash from the key
  alone, still in one round trip. Links, failure counters, the policy record and the
  signing keys have slots of their own: nothing changes them together with a key.
"""

from __future__ import annotations

from .lua import text_constant

# an account's listing indexes (see listing.py for what each holds)
LISTING = ("created", "tokens", "uses", "labels", "statuses", "roles")
# the member of the role names set (``roles``) once the listing indexes hold every key
# of the account in this keygate's layout (scripts/status_runs.lua), and those of older
# layouts, which indexing the account again removes
LISTED = text_constant("status_runs", "LISTED")
OLDER_MARKS = ("", ":status-runs", ":layout-2")
# an older layout's listing indexes that indexing the account again removes: the token
# date, last-use, label and status indexes as sorted sets (now packed sets, ``tokens``,
# ``uses``, ``labels`` and ``statuses``: scripts/packed.lua) with the label index's
# zones, and the role holders' (``older_holders``); and the creation index as a sorted
# set (``keys``, now the packed set ``created``), which is also the list of the keys
# such an account held before it is indexed again (store/core.py key_chunks)
OLDER_CREATION_INDEX = "keys"
OLDER_INDEXES = ("tok", "used", "label", "label:zones", "label:zone-dates", "status",
                 OLDER_CREATION_INDEX)


def is_role(member: str) -> bool:
    """Whether a member of an account's role names set is a role (a role's name starts
    with a letter or a digit; a layout's mark is '' or starts with ':')."""
    return bool(member) and not member.startswith(":")


def owner_of(app_key: str) -> str:
    """The account written in a key's name (``prefix-account-RANDOM``); for a name that
    is not a key's, the name itself (its own slot, where nothing is found)."""
    first, last = app_key.find("-"), app_key.rfind("-")
    return app_key[first + 1:last] if 0 <= first < last - 1 else app_key


class Keyspace:
    def __init__(self, prefix: str, clustered: bool = False):
        self.prefix = prefix
        self.clustered = clustered
        # the invalidation channel: every change of a key hash, the policy announcement
        # or the signing keys publishes the changed name here
        self.channel = f"{prefix}invalidate"
        self.key_prefix = f"{prefix}key:"
        self.account_prefix = f"{prefix}acct:"
        self.policy_record = f"{prefix}policy:version"
        self.signing_keys_record = f"{prefix}jwt:keys"
        # the accounts keygate knows (accounts.py): a slot of its own on a cluster
        self.accounts_record = f"{prefix}accounts"
        # the store's layout version (layout.py)
        self.layout_record = f"{prefix}store:layout"

    def key(self, app_key: str) -> str:
        """The hash of one key: its owner, token digests and every grant it holds."""
        if not self.clustered:  # a cold key's lookup: no parsing where no tag is needed
            return self.key_prefix + app_key
        return self.keys_of(owner_of(app_key)) + app_key

    def keys_of(self, account: str) -> str:
        """What the hash names of the keys ``account`` owns start with (the scripts that
        read an account's key hashes by name are given it)."""
        return f"{self.key_prefix}{{{account}}}:" if self.clustered else self.key_prefix

    def app_key_of(self, name: str) -> str | None:
        """The key whose hash ``name`` is, or None for any other name."""
        if not name.startswith(self.key_prefix):
            return None
        rest = name[len(self.key_prefix):]
        if self.clustered:
            tag_end = rest.find("}:")
            return rest[tag_end + 2:] if rest.startswith("{") and tag_end > 0 else None
        return rest

    def account(self, account: str, what: str) -> str:
        """One of an account's records: ``ext``, ``owners``, ``settings``,
        ``audit``, ``access``, and the listing indexes (``LISTING``)."""
        if self.clustered:
            return f"{self.account_prefix}{{{account}}}:{what}"
        return f"{self.account_prefix}{account}:{what}"

    def account_record(self, name: str) -> tuple[str, str] | None:
        """``(account, what)`` of an account record's name, or None for any other name
        (an account holds no ':', '{' or '}')."""
        if not name.startswith(self.account_prefix):
            return None
        rest = name[len(self.account_prefix):]
        if self.clustered:
            if not rest.startswith("{"):
                return None
            account, sep, what = rest[1:].partition("}:")
        else:
            account, sep, what = rest.partition(":")
        return (account, what) if sep and account else None

    def listing(self, account: str) -> list[str]:
        """The account's listing indexes, in the order the key scripts take them in
        ``KEYS`` (scripts/key_rules.lua): creation date, token date, last use, label,
        status, role names. The keys holding a role are ``holding:{role}``
        (:meth:`role_holders`), named by the scripts from the role names set's name
        (``roles`` replaced by ``holding:``)."""
        return [self.account(account, what) for what in LISTING]

    def role_holders(self, account: str, role: str) -> str:
        """The packed set (scripts/packed.lua) of the account's generated keys that
        hold ``role``, scored as the token date index (scripts/status_runs.lua)."""
        return self.account(account, f"holding:{role}")

    def older_holders(self, account: str, role: str) -> str:
        """The sorted set of the keys holding ``role`` as layout 1 kept it, removed once
        the account is indexed again."""
        return self.account(account, f"holders:{role}")

    def older_role_set(self, account: str, role: str) -> str:
        """The set of the keys holding ``role`` as an older keygate kept it (without
        their token dates), removed once the account is indexed again."""
        return f"{self.account(account, 'roles')}:{role}"

    def link(self, link_id: str) -> str:
        return f"{self.prefix}link:{link_id}"

    def failure_counter(self, kind: str, window: int, subject: str) -> str:
        return f"{self.prefix}rl:{kind}:{window}:{subject}"

    def accounts_pattern(self) -> str:
        """A SCAN pattern matching every account record (the prefix matched literally)."""
        return glob_escape(self.account_prefix) + "*"


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern (a prefix may hold ``*?[]\\``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
