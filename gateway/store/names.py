"""Every Redis name keygate uses, derived from the ``store_prefix`` setting.

Python code and scripts get their names from here only (a script receives them in
``KEYS`` or, where noted in the package's docstring, derives them from a prefix it is
given), so a change of layout — hash tags for Redis Cluster — is made in this one class.
"""

from __future__ import annotations


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
        ``audit``, ``access``."""
        return f"{self.account_prefix}{account}:{what}"

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
