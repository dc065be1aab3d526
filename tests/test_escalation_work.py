"""The escalation rule in the management API does work linear in the policy: giving a
key a role of thousands of lines (POST or PATCH, open to any key holding ``edit``)
once put each line of the role to Casbin, each question a scan of every line of the
policy (seconds on the event loop for 2,000 lines). It now judges as ``policy explain``
does, from the caller's lines read once and indexed, and answers as before.

Work is counted, never timed: the steps of the judgement (``Delegation.steps_spent``)
and the questions put to Casbin (``Policy.casbin_questions``, each a scan of the
policy). The real management app over a policy directory of the test's own, real
Casbin with the real model.conf, keys on the private redis-server.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from conftest import Key

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.policy.delegation import judge_assign
from gateway.policy.reading import CASBIN_STEPS_PER_LINE
from gateway.settings import PROJECT_ROOT
from gateway.store import CLI_ACTOR

KEYS = "/api/v1/accounts/acme/keys"
LINES = 2000
# work a request giving a key a role may cost per line of the policy: Casbin's answers
# to the request's own authentication (a scan each), reading the caller's lines and
# each line of the role once; a question to Casbin per line of the role is LINES times
# more
WORK_PER_LINE = 60


def large_policy_text(lines: int) -> str:
    """Role big grants ``lines`` permissions; big-secret inherits them and adds one
    (vault, read, its line ``lines + 2``); wide holds every res* permission and manages
    keys, but not the vault; roles small0… grant one of big's permissions each; denier
    denies ``lines`` permissions no other role grants."""
    text = [f"p, big, *, res{n}, act{n % 7}, allow\n" for n in range(lines)]
    text += ["g, big-secret, big\n", "p, big-secret, *, vault, read, allow\n",
             "p, wide, *, res*, *, allow\n", "p, wide, *, api-keys, *, allow\n"]
    # many small roles: the roles a key may assign are judged one by one
    text += [f"p, small{n}, *, res{n}, act{n % 7}, allow\n" for n in range(lines // 4)]
    # denier takes away as many permissions big does not grant
    text += [f"p, denier, *, other{n}, act{n % 7}, deny\n" for n in range(lines)]
    return "".join(text)


class Api:
    def __init__(self, gateway: Any, client: Any):
        self.gateway, self.client = gateway, client

    async def key(self, roles: list[str]) -> Key:
        issued = await self.gateway.lifecycle.create("acme", "k", roles, CLI_ACTOR)
        return Key(issued.record.app_key, issued.token)

    async def counted(self, method: str, path: str, body: Any, key: Key) -> tuple[Any, int]:
        """The response, and the work the request cost: the judgement's steps plus
        Casbin's scans of the policy, in steps."""
        policy = self.gateway.policy
        steps, questions = self.gateway.delegation.steps_spent, policy.casbin_questions
        response = await self.client.request(method, path, json=body, headers=key.headers)
        scans = policy.casbin_questions - questions
        work = (self.gateway.delegation.steps_spent - steps
                + scans * CASBIN_STEPS_PER_LINE * len(policy.p_lines))
        return response, work

    def bound(self) -> int:
        return WORK_PER_LINE * len(self.gateway.policy.p_lines)

    def as_casbin_judges(self, roles: list[str], role: str) -> Any:
        """The verdict with each permission put to Casbin (how the API once judged)."""
        policy = self.gateway.policy
        return judge_assign(policy, roles, "acme", role, decide=policy.decide)


async def serving(lines: int, make_settings: Any, clock: Any, aiohttp_client: Any,
                  tmp_path: Any) -> Any:
    directory = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", directory)
    (directory / "large.csv").write_text(large_policy_text(lines))
    gateway = build_gateway(make_settings(policies_dir=str(directory)), clock=clock)
    gateway.start()
    client = await aiohttp_client(build_management_app(gateway))
    return Api(gateway, client)


@pytest.fixture
async def api(make_settings, clock, aiohttp_client, tmp_path) -> Any:
    served = await serving(LINES, make_settings, clock, aiohttp_client, tmp_path)
    yield served
    await served.gateway.close()


@pytest.fixture
async def small_api(make_settings, clock, aiohttp_client, tmp_path) -> Any:
    """The same roles at 200 lines, where asking Casbin each line is affordable."""
    served = await serving(200, make_settings, clock, aiohttp_client, tmp_path)
    yield served
    await served.gateway.close()


async def test_creating_a_key_with_a_large_role_takes_linear_work(api):
    owner = await api.key(["owner"])
    response, work = await api.counted("POST", KEYS, {"label": "big", "roles": ["big"]},
                                       owner)
    assert response.status == 201, await response.text()
    assert work <= api.bound(), (work, api.bound())


async def test_a_refusal_after_every_line_of_a_large_role_takes_linear_work(api):
    # wide holds each of big's permissions, not big-secret's last one: every line read
    wide = await api.key(["wide"])
    response, work = await api.counted(
        "POST", KEYS, {"label": "secret", "roles": ["big-secret"]}, wide)
    assert response.status == 403, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "escalation_refused"
    assert work <= api.bound(), (work, api.bound())
    assert error["message"] == (
        "this API key may not assign role 'big-secret' in account 'acme': it grants "
        "'read' on 'vault', which this key does not hold (policy large.csv, line "
        f"{LINES + 2}), and no policy line lets it 'assign' 'role:big-secret'")
    # big itself it may assign, in linear work too
    response, work = await api.counted("POST", KEYS, {"label": "b", "roles": ["big"]}, wide)
    assert response.status == 201, await response.text()
    assert work <= api.bound(), (work, api.bound())


async def test_the_roles_a_large_key_may_assign_take_linear_work(api):
    # /me judges every role the policies define for the caller: its lines, as many as
    # big's, are read once for all of them, not once per role
    holder = await api.key(["big", "user-admin-restricted"])
    steps, questions = api.gateway.delegation.steps_spent, api.gateway.policy.casbin_questions
    response = await api.client.get("/api/v1/accounts/acme/me", headers=holder.headers)
    assert response.status == 200, await response.text()
    assignable = (await response.json())["assignableRoles"]
    assert {"big", "small0", f"small{LINES // 4 - 1}", "orders-writer"} <= set(assignable)
    assert not {"big-secret", "owner", "wide"} & set(assignable)
    work = (api.gateway.delegation.steps_spent - steps
            + (api.gateway.policy.casbin_questions - questions)
            * CASBIN_STEPS_PER_LINE * len(api.gateway.policy.p_lines))
    assert work <= api.bound(), (work, api.bound())


async def test_changing_a_keys_roles_to_a_large_role_takes_linear_work(api):
    owner = await api.key(["owner"])
    target = await api.key(["orders-reader"])
    response, work = await api.counted("PATCH", f"{KEYS}/{target.app_key}",
                                       {"roles": ["orders-reader", "big"]}, owner)
    assert response.status == 200, await response.text()
    assert work <= api.bound(), (work, api.bound())
    record = await api.gateway.store.get_key("acme", target.app_key)
    assert record is not None and record.roles == ("orders-reader", "big")


async def test_a_key_dropping_its_many_deny_lines_is_checked_in_linear_work(api):
    # a key may drop its own role whose deny lines reach nothing the roles it keeps
    # allow: each of denier's 2,000 deny lines was compared with each of big's 2,000
    # allow lines (4,000,000 comparisons, and uncounted); each is now a look-up in an
    # index of the allow lines, counted with the rest of the judgement
    key = await api.key(["big", "user-admin-restricted", "denier"])
    steps = api.gateway.delegation.steps_spent
    response, work = await api.counted("PATCH", f"{KEYS}/{key.app_key}",
                                       {"roles": ["big", "user-admin-restricted"]}, key)
    assert response.status == 200, await response.text()
    # the lines the check reads are counted, and the whole request is linear
    assert api.gateway.delegation.steps_spent - steps >= 2 * LINES
    assert work <= api.bound(), (work, api.bound())


async def test_a_verdict_reached_before_needs_no_reading_of_the_callers_lines(api):
    # owner and big (2,001 lines) asked about user-admin-restricted: the roles it hands
    # out (orders-reader, orders-writer, catalog-reader) are judged on the way and
    # kept; after the lines of 16 other callers have been read, as many readings as are
    # kept, asking about orders-writer is answered from what was kept, without reading
    # owner's and big's lines again
    delegation = api.gateway.delegation
    caller = ["big", "owner"]
    assert delegation.why_not(caller, "acme", "user-admin-restricted") is None
    for n in range(16):
        assert delegation.why_not([f"small{n}"], "acme", "big") is not None
    steps = delegation.steps_spent
    assert delegation.why_not(caller, "acme", "orders-writer") is None
    assert delegation.steps_spent == steps


@pytest.mark.parametrize("caller, role, status", [
    (["owner"], "big", 201), (["owner"], "big-secret", 201), (["wide"], "big", 201),
    (["wide"], "big-secret", 403), (["user-admin-restricted"], "big", 403),
    (["wide", "suspended-partner"], "big", 201),
])
async def test_the_api_answers_as_casbins_decisions_do(small_api, caller, role, status):
    # the verdict with each of the role's permissions put to Casbin, as the API once
    # judged, is the API's answer (and its reason, word for word)
    key = await small_api.key(caller)
    response, _ = await small_api.counted("POST", KEYS, {"label": "x", "roles": [role]},
                                          key)
    assert response.status == status, await response.text()
    verdict = small_api.as_casbin_judges(caller, role)
    assert verdict.allowed == (status == 201)
    if not verdict.allowed:
        message = (await response.json())["error"]["message"]
        assert message == (
            f"this API key may not assign role {role!r} in account 'acme': {verdict.reason}")
