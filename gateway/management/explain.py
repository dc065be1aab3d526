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

Bad input is a 400 in the one error shape before anything is looked up: unknown or
repeated parameters, more roles than a key could sensibly hold, names the policy files
could not contain.
"""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..errors import BadRequest, NotFound
from ..key_roles import key_roles
from ..policy.delegation import assignment
from ..policy.explain import MAX_QUESTION_ROLES, explain, question_problem
from .common import authorize, json_response

routes = web.RouteTableDef()

PARAMETERS = ("resource", "action", "role", "key")
MAX_KEY_CHARS = 200


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_query")


def _one(request: web.Request, name: str) -> str:
    values = request.query.getall(name, [])
    if len(values) != 1 or not values[0]:
        raise _bad(f"give {name} once (e.g. ?resource=orders&action=read&role=orders-reader)")
    return values[0]


@routes.get("/api/v1/accounts/{account}/explain")
async def explain_decision(request: web.Request) -> web.Response:
    identity = await authorize(request, "view")
    query = request.query
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise _bad(f"unknown parameter {unknown[0][:40]!r}; parameters: {', '.join(PARAMETERS)}")
    resource, action = _one(request, "resource"), _one(request, "action")
    roles = query.getall("role", [])
    keys = query.getall("key", [])
    if bool(roles) == bool(keys) or len(keys) > 1:
        raise _bad("give role (repeat it for several) or key, one of them")
    if len(roles) > MAX_QUESTION_ROLES:
        raise _bad(f"at most {MAX_QUESTION_ROLES} roles")
    problem = question_problem(roles, resource, action)
    if problem is not None:
        raise _bad(problem)
    gateway = request.app[GATEWAY]
    account = identity.account
    held = None
    if keys:
        app_key = keys[0]
        if len(app_key) > MAX_KEY_CHARS or gateway.fmt.key_account(app_key) is None:
            raise BadRequest(f"{app_key[:80]!r} is not an API key", code="bad_app_key")
        held = await key_roles(gateway.store, gateway.fmt, app_key, account)
        if held is None:
            raise NotFound(f"no API key {app_key!r} holds roles in account {account!r}",
                           code="key_not_found")
        roles = list(held.roles)
    policy = gateway.policy  # one policy for the whole answer, even during a reload
    explanation = explain(policy, roles, account, resource, action)
    body = {**explanation.as_json(), "policyVersion": policy.version}
    if held is not None:
        body["key"] = held.as_json()
    verdict = assignment(policy, explanation.roles, account, resource, action)
    if verdict is not None:
        body["assignment"] = verdict.as_json()
    return json_response(body)
