"""Every Redis name keygate uses, derived from the ``store_prefix`` setting.

Python code and scripts get their names from here only (a script receives them in
``KEYS`` or, where noted in the package's docstring, derives them from a prefix it is
given), so a change of layout — hash tags for Redis Cluster — is made in this one class.
"""

from __future__ import annotations

# an account's listing indexes (see listing.py for what each holds)
LISTING = ("keys", "tok", "used", "label", "status", "roles")


class Keyspace:
    def __init__(self, prefix: str):
        self.prefix = prefix
        # the invalidation channel: every change of a key hash, the policy announcement
        # or the signing keys publishes the changed name here
        self.channel = f"{prefix}invalidate"
        self.key_prefix = f"{prefix}key:"
        self.account_prefix = f"{prefix}acct:"
        self.policy_record = f"{prefix}policy:version"
        self.signing_keys_record = f"{prefix}jwt:keys"

    def key(self, app_key: str) -> str:
        """The hash of one key: its owner, token digests and every grant it holds."""
        return self.key_prefix + app_key

    def account(self, account: str, what: str) -> str:
        """One of an account's records: ``keys``, ``ext``, ``owners``, ``settings``,
        ``audit``, ``access``, and the listing indexes (``LISTING``)."""
        return f"{self.account_prefix}{account}:{what}"

    def listing(self, account: str) -> list[str]:
        """The account's listing indexes, in the order the key scripts take them in
        ``KEYS`` (scripts/key_rules.lua): creation date, token date, last use, label,
        status, role names. The keys holding a role are ``{roles}:{role}``
        (:meth:`role_holders`), named by the scripts from the role names set."""
        return [self.account(account, what) for what in LISTING]

    def role_holders(self, account: str, role: str) -> str:
        """The set of the account's generated keys that hold ``role``."""
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
