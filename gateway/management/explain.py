"""``GET /accounts/{account}/explain``: a decision and the policy lines behind it.

``?resource=R&action=X`` with ``role=…`` (repeatable) or ``key=K``. Permission ``view``
in the account, like reading its keys. What it may reveal, and why that is safe:

* the policy lines that apply in this account (``*`` lines and this account's own),
  never those of other accounts: a line for another account cannot match here;
* a key's roles only when the key holds roles *in this account* (its own key, or a key
  another account owns that this account granted roles to): a key of another account
  without a grant here, and a key that does not exist, get the same 404
  (``gateway.key_roles``);
* nothing secret: no token, no digest; for an external key only the grant's status,
  which the account's external-key list shows already.

Bad input is a 400 in the one error shape before anything is looked up: unknown,
repeated or empty parameters, more roles than a key could sensibly hold, names the
policy files could not contain.

The work is bounded: an explanation runs on the event loop (a fraction of a second at
most), counted in steps (:class:`~gateway.policy.reading.WorkMeter`), and one that would
take more than :data:`MAX_EXPLAIN_WORK` is refused with 400 ``explanation_too_large``
rather than computed. (Judging ``role:R``/``assign`` once put every line of R to
Casbin, which scans every line of the policy: with R of a thousand lines, seconds for
any key holding ``view``.)
"""

from __future__ import annotations

from aiohttp import web
from msgspec import UNSET

from ..context import GATEWAY
from ..errors import BadRequest, NotFound
from ..key_roles import key_roles
from ..pipeline import Identity
from ..policy.delegation import assignment
from ..policy.explain import explain, question_problem, refused_first
from ..policy.reading import TooMuchWork, WorkMeter
from .common import VIEW, json_response
from .operations import Operations
from .schema import AccountPath, ExplainQuery, Explanation

operations = Operations("policy")
# steps one explanation may take (each well under a microsecond here): about a quarter
# of a second at most; a 10,000-line policy's questions take a fifth of it
MAX_EXPLAIN_WORK = 1_000_000


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_query")


@operations.get("/api/v1/accounts/{account}/explain",
                summary="Explain a decision: the policy lines behind it", permission=VIEW,
                params=AccountPath, query=ExplainQuery, responses={200: Explanation},
                errors={400: ("bad_app_key", "explanation_too_large"),
                        404: ("key_not_found",)})
async def explain_decision(request: web.Request, identity: Identity, path: AccountPath,
                           query: ExplainQuery) -> web.Response:
    """For `role` (repeat it for several) or a `key`'s roles in this account: the
    decision on `resource`/`action`, the lines that matched (file and line) and those
    that decided. Unknown parameters are refused."""
    roles = query.role
    if bool(roles) == (query.key is not UNSET):
        raise _bad("give role (repeat it for several) or key, one of them")
    problem = question_problem(roles, query.resource, query.action)
    if problem is not None:
        raise _bad(problem)
    gateway = request.app[GATEWAY]
    account = identity.account
    held = None
    if query.key is not UNSET:
        app_key = query.key
        if gateway.fmt.key_account(app_key) is None:
            raise BadRequest(f"{app_key[:80]!r} is not an API key", code="bad_app_key")
        held = await key_roles(gateway.store, gateway.fmt, app_key, account)
        if held is None:
            raise NotFound(f"no API key {app_key!r} holds roles in account {account!r}",
                           code="key_not_found")
        roles = list(held.roles)
    policy = gateway.policy  # one policy for the whole answer, even during a reload
    meter = WorkMeter(MAX_EXPLAIN_WORK)
    try:
        explanation = explain(policy, roles, account, query.resource, query.action, meter)
        verdict = assignment(policy, explanation.roles, account, query.resource,
                             query.action, meter)
    except TooMuchWork as exc:
        raise BadRequest(str(exc), code="explanation_too_large") from None
    if held is not None and held.refusal is not None:
        explanation = refused_first(explanation, held.refusal)
    body = {**explanation.as_json(), "policyVersion": policy.version}
    if held is not None:
        body["key"] = held.as_json()
    if verdict is not None:
        body["assignment"] = verdict.as_json()
    return json_response(body)
