"""The changes the store refuses, as exceptions.

A refusal means the change's precondition did not hold when its script ran, so nothing
was written (no record, no audit event, no notice). A caller that wants to tell them
apart catches the class; ``StoreRefusal`` catches them all. Absence is not a refusal: a
read or change of a key the account does not hold answers None (or False for a delete).
Each script answers a refusal with a short status, and :func:`refusal` turns it into
its exception here, in one place.
"""

from __future__ import annotations


class StoreRefusal(Exception):
    """A change the store refused; nothing was written."""

    status = ""  # what the script answers


class KeyChanged(StoreRefusal):
    """The key's roles (or the grant's) are no longer those the caller checked: the
    change was not made. The escalation check ran on the roles the caller saw, so a
    change racing it must not slip through with roles nobody checked."""

    status = "changed"


class LastOwnerKey(StoreRefusal):
    """The change would leave the account without an active ``owner`` key; it was not
    made (the CLI, which works on the store directly, is the way out)."""

    status = "last_owner"


class RenewalRefused(StoreRefusal):
    """A renewal cannot start: ``reason`` is ``pending`` (:class:`RenewalPending`) or
    ``link`` (:class:`TokenLinkPending`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RenewalPending(RenewalRefused):
    """A renewal is pending already: finish or undo it first."""

    status = "pending"

    def __init__(self) -> None:
        super().__init__(self.status)


class TokenLinkPending(RenewalRefused):
    """The one-time link of the key's last token is unopened and still valid."""

    status = "link"

    def __init__(self) -> None:
        super().__init__(self.status)


class NoRenewalPending(StoreRefusal):
    """Finish or undo asked of a key with no renewal pending."""

    status = "none"


class KeyNameTaken(StoreRefusal):
    """The key name was issued before (a live or deleted key): names are never reused.
    Names are random, so the caller draws another."""

    status = "taken"


class KeyNotFound(StoreRefusal):
    """A grant was asked for a key that does not exist (or was deleted)."""

    status = "no_key"


class OwnKey(StoreRefusal):
    """A grant was asked for a key of the granting account itself: its roles there are
    its own, not a grant."""

    status = "own"


class GrantExists(StoreRefusal):
    """The key holds a grant in the account already: change that one instead."""

    status = "exists"


_BY_STATUS: dict[str, type[StoreRefusal]] = {
    cls.status: cls
    for cls in (KeyChanged, LastOwnerKey, RenewalPending, TokenLinkPending, NoRenewalPending,
                KeyNameTaken, KeyNotFound, OwnKey, GrantExists)
}


def refusal(status: str) -> StoreRefusal | None:
    """The exception a script's status stands for, or None when it is no refusal
    (``ok``, ``missing``)."""
    cls = _BY_STATUS.get(status)
    return cls() if cls is not None else None
