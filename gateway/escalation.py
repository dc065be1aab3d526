"""No escalation through delegated administration: who may hand out which role.

The management API lets a key with ``edit`` on ``api-keys`` create keys and give them
roles. Without a further rule, a key holding only ``user-admin-restricted`` could mint
itself an ``owner`` key. keygate applies Kubernetes RBAC's *escalate* and *bind* rules:

**Assign.** A caller holding roles C in account A may assign role R in A (create a key
with it, add it to a key, grant it to an external key) when no deny line of C matches
``(role:R, assign)`` in A, and either

* a line made for it allows C ``(role:R, assign)`` in A
  (``p, user-admin-restricted, *, role:orders-writer, assign, allow``; patterns work
  as elsewhere: ``role:orders-*``, but the resource must name roles — a catch-all
  ``*, *`` line counts only through the permissions it holds, below), or
* C already holds every permission R grants in A: for each allow line of R (and of
  the roles R inherits) that applies in A, C's roles allow its resource and action,
  and no deny line of C touches them. The second condition matters with wildcards: a
  caller holding ``*, *`` with a deny on ``orders`` is allowed ``(*, *)`` by Casbin,
  yet handing out ``owner`` would give a key the orders access its giver lacks. And C
  may assign every role R hands out in turn (R's assign lines, or a catch-all that
  allows ``role:X, assign``): a key holding R would hand them out in its next request,
  so an ``owner`` suspended from orders may not make a ``user-admin-restricted`` key
  that makes an ``orders-writer`` key.

A role's deny lines are not permissions: anyone who may assign roles at all may assign
a role that only takes access away (e.g. ``suspended-partner``).

**Act on.** A caller may change, deactivate, delete, renew the token of, or finish or
undo a renewal of a key (or change or remove a grant) only if it may assign every role
that key holds there: otherwise a user administrator could switch off the owner's key,
or renew its token and receive the new one — and so become the owner. A generated key
may also hold roles that other accounts granted it (an external key there); whoever
receives its token holds those too, so to renew it the caller must also be one whose
roles could assign each of them in the account that granted it. Else a user
administrator of account A could renew the token of A's key that account B made owner
of B, and so become B's owner. (The key's owner account keeps its say over its keys: an
owner whose roles could assign B's roles in B may renew them, as B accepted when it
granted them.) Those grants count for nothing else: changing, deactivating or deleting
the key, or finishing or undoing its renewal, hands no token to anyone, and as key
names are public, any account could otherwise put a key out of reach of its own
account's administrators — a stolen key made owner of the thief's account would then
be revocable by its owners alone.

**Self.** A key may act on itself (renew its own token, relabel, deactivate or delete
itself, drop roles): it gains nothing it does not hold. It never raises its own roles:
it may add to itself only a role whose every permission it already holds, even if an
``assign`` line lets it hand that role to others; and it may not drop a role whose deny
lines it would escape (a key given ``suspended-partner`` would otherwise take it off
itself and have back what the deny took away). Another key that may act on it may.

Verdicts are judged as ``policy explain``, ``policy test`` and ``policy diff`` judge them
(:func:`gateway.policy.delegation.judge_assign`): the caller's lines read once and
indexed, so that judging a role of thousands of lines takes work linear in the policy
(it once put every line of the role to Casbin, each question a scan of the whole
policy: seconds on the event loop for any key holding ``edit``). They are cached under
the policy version, so they follow a reloaded policy at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .cache import LRU
from .errors import Forbidden
from .pipeline import Identity
from .pipeline.authorizer import Authorizer
from .policy.delegation import (
    ASSIGN,
    ROLE_RESOURCE_PREFIX,
    AssignVerdict,
    CallerJudge,
    escaped_denies,
    judge_assign,
    role_resource,
)
from .policy.files import Policy
from .policy.reading import WorkMeter

__all__ = ["ASSIGN", "ROLE_RESOURCE_PREFIX", "Delegation", "EscalationRefused", "role_resource"]


# caller role sets whose solved verdicts are kept (each holds at most one verdict per
# role the policies define)
SOLVED_KEPT = 256
# caller role sets whose lines are kept read (each as large as the lines it holds): the
# roles of the few keys asking at a time
READINGS_KEPT = 16


class EscalationRefused(Forbidden):
    code = "escalation_refused"


class Delegation:
    """Answers "may these roles assign that role here?" and refuses escalations."""

    def __init__(self, authorizer: Authorizer, cache_size: int = 10_000):
        self.authorizer = authorizer
        # counts the steps every judgement takes (no limit: a verdict is never refused
        # for its work, so that the API answers as the policy tools do)
        self.meter = WorkMeter()
        self._verdicts: LRU[tuple[str, str, tuple[str, ...], str, str], str] = LRU(cache_size)
        # per caller roles and account, the assign verdicts the rule reached on the way
        # (a role judged with the roles it hands out): asked once for all questions.
        # Kept apart from the readings below, under the same key, because they are
        # kept for more callers: a reading is as large as the caller's lines (1.3 MB
        # for 2,000), so few are kept, while a verdict kept answers without one
        self._solved: LRU[tuple[str, tuple[str, ...], str], dict[str, AssignVerdict]] = LRU(
            SOLVED_KEPT)
        # per caller roles and account, their lines read once for all the roles asked
        # about (each role the policies define, for assignable())
        self._judges: LRU[tuple[str, tuple[str, ...], str], CallerJudge] = LRU(READINGS_KEPT)

    @property
    def steps_spent(self) -> int:
        """The steps every judgement so far has taken: the work assignments cost."""
        return self.meter.spent

    def why_not(self, caller_roles: Sequence[str], account: str, role: str) -> str | None:
        """None when ``caller_roles`` may assign ``role`` in ``account``, else the reason
        (for the error message). Cached under the policy version, like decisions."""
        return self._cached("assign", caller_roles, account, role)

    def why_not_hold(self, caller_roles: Sequence[str], account: str, role: str) -> str | None:
        """None when adding ``role`` to a key holding ``caller_roles`` gives it no
        permission it lacks: no deny line forbids assigning it and the key holds every
        permission the role grants (an ``assign`` line does not suffice here)."""
        return self._cached("hold", caller_roles, account, role)

    def _cached(
        self, kind: str, caller_roles: Sequence[str], account: str, role: str
    ) -> str | None:
        policy = self.authorizer.policy
        key = (policy.version, kind, tuple(sorted(caller_roles)), account, role)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(policy, caller_roles, account, role, kind == "assign") or ""
            self._verdicts.put(key, verdict)
        return verdict or None

    def _judge(
        self, policy: Policy, caller_roles: Sequence[str], account: str, role: str,
        by_assign_line: bool,
    ) -> str | None:
        """The rule itself is pure (gateway.policy.delegation), so that the policy tools
        judge assignments as this does, and from the same reading of the caller's lines
        (not the request path's decisions: put to Casbin, each line of the role would be
        a scan of every line of the policy)."""
        key = (policy.version, tuple(sorted(caller_roles)), account)
        solved = self._solved.get(key)
        if solved is None:
            solved = {}
            self._solved.put(key, solved)
        if by_assign_line and role in solved:
            # reached before (asked, or handed out by a role asked about): no need of
            # the caller's lines, which may have left their smaller cache since
            return solved[role].reason
        judge = self._judges.get(key)
        if judge is None:
            judge = CallerJudge(policy, caller_roles, account, None, self.meter)
            self._judges.put(key, judge)
        return judge_assign(
            policy, caller_roles, account, role,
            by_assign_line=by_assign_line, solved=solved, judge=judge,
        ).reason

    def assignable(self, caller_roles: Sequence[str], account: str) -> list[str]:
        """Every role defined in the policies that ``caller_roles`` may assign here."""
        return sorted(
            role for role in self.authorizer.policy.roles
            if self.why_not(caller_roles, account, role) is None
        )

    def check_assign(self, caller: Identity, roles: Iterable[str]) -> None:
        """Refuse (403 ``escalation_refused``) unless the caller may assign every role."""
        self._check_assign(caller.roles, caller.account, roles)

    def _check_assign(self, caller_roles: Sequence[str], account: str,
                      roles: Iterable[str]) -> None:
        for role in roles:
            reason = self.why_not(caller_roles, account, role)
            if reason is not None:
                raise EscalationRefused(
                    f"this API key may not assign role {role!r} in account "
                    f"{account!r}: {reason}"
                )

    def check_act_on(
        self,
        caller: Identity,
        app_key: str,
        held: Iterable[str],
        elsewhere: Iterable[tuple[str, Sequence[str]]] = (),
    ) -> None:
        """Refuse unless the caller may assign every role the target key holds (here,
        and, for ``elsewhere``, the roles other accounts granted it, each judged in its
        account: given when the action hands the caller the key's token), or is that key
        (acting with its own power gains nothing)."""
        if app_key == caller.principal.app_key:
            return
        for role in held:
            reason = self.why_not(caller.roles, caller.account, role)
            if reason is not None:
                raise EscalationRefused(
                    f"this API key may not act on API key {app_key!r}: it holds role "
                    f"{role!r}, which this key may not assign in account "
                    f"{caller.account!r} ({reason})"
                )
        for account, roles in elsewhere:
            # which role stays unsaid: the granting account's business, not the owner's
            if any(self.why_not(caller.roles, account, role) is not None for role in roles):
                raise EscalationRefused(
                    f"this API key may not act on API key {app_key!r}: account {account!r} "
                    "granted it roles that this key's roles could not assign there, and "
                    "whoever holds its token holds them"
                )

    def check_change(
        self,
        caller: Identity,
        app_key: str,
        held: Sequence[str],
        new_roles: Sequence[str] | None,
        elsewhere: Iterable[tuple[str, Sequence[str]]] = (),
    ) -> None:
        """A change of a key or grant: the caller may act on it as it is (``elsewhere``:
        as :meth:`check_act_on`), may assign the roles it would gain, and adds no role to
        its own key nor escapes a deny line of its own. (Roles it keeps were checked as
        held; a key may drop its own roles that deny nothing.)

        A change of the caller's own key or grant is judged with ``held``, the roles the
        change finds (the store refuses it if they differ when it is made), not with
        the roles the request was authenticated with: an owner may have taken a role
        from the key in between, and putting it back is raising its roles, not keeping
        them."""
        self.check_act_on(caller, app_key, held, elsewhere)
        if new_roles is None:
            return
        added = [r for r in new_roles if r not in held]
        if app_key != caller.principal.app_key:
            self.check_assign(caller, added)
            return
        self._check_keeps_its_denies(caller, held, new_roles)
        for role in added:
            reason = self.why_not_hold(held, caller.account, role)
            if reason is not None:
                raise EscalationRefused(
                    f"an API key cannot raise its own roles: role {role!r} in account "
                    f"{caller.account!r} would give it more than it holds ({reason})"
                )
        self._check_assign(held, caller.account, added)

    def _check_keeps_its_denies(
        self, caller: Identity, held: Sequence[str], new_roles: Sequence[str]
    ) -> None:
        """Refuse a key's own change of roles that ends a deny line over something the
        roles it keeps allow. A key's permissions are its allow lines less its deny
        lines; the roles it adds give nothing it lacks (their own rule), so it gains
        only where a deny line it escapes overlaps an allow line it keeps. (Dropping a
        role whose denies only narrow its own allows, or whatever the key keeps does not
        reach, gains nothing and stays allowed.)"""
        escaped = escaped_denies(self.authorizer.policy, held, new_roles, caller.account,
                                 self.meter)
        if escaped:
            where = ", ".join(f"{line.file}:{line.line}" for line in escaped[:3])
            raise EscalationRefused(
                "an API key cannot lift its own deny lines: the roles it would drop hold "
                f"{where}, which deny it what the roles it keeps allow in account "
                f"{caller.account!r}; another key that may act on it can change its roles"
            )
