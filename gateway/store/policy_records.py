"""What the store keeps for the policy: the version the deployment announced (every
instance compares its own with it, see gateway.policy.sync) and how many keys hold each
role (a reload refuses to drop a role still held)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from .accounts import AccountRecords
from .core import unavailable
from .names import LISTED, is_role
from .packed_index import counts_of
from .records import Grant, PolicyAnnouncement


class PolicyRecords(AccountRecords):
    @unavailable
    async def role_holders(self, chunk: int = 500) -> dict[str, dict[str, int]]:
        """How many keys hold each role, per account they hold it in (account → role →
        count): generated keys in their own account, external keys in the accounts that
        granted them roles, active or not (an inactive key can be activated again).

        Generated keys are counted from the listing's role holders, one ZCARD per role
        in use, whatever the number of keys (an account whose listing indexes are not
        complete yet is read a chunk of keys at a time, as external keys always are:
        only their grant fields). For checks a person starts (a policy reload,
        ``keygate policy check``), never for requests. Memory grows with accounts and
        roles, not keys."""
        held: dict[str, dict[str, int]] = {}
        # the accounts keygate knows (accounts.py); one with neither kind of key counts none
        for account in await self._known_accounts():
            counts = await self._generated_roles(account, chunk)
            external = self._by_ranks(self.names.account(account, "ext"), chunk)
            for role, n in (await self._count_roles(account, external, False)).items():
                counts[role] = counts.get(role, 0) + n
            if counts:
                held[account] = dict(sorted(counts.items()))
        return held

    async def _generated_roles(self, account: str, chunk: int) -> dict[str, int]:
        """The account's generated keys per role: the sizes of the listing's role holders
        once its indexes are complete (the roles-in-use set holds LISTED then; the change
        scripts keep the sets, tests/test_listing_index.py checks them against the
        keys), else read from the keys (store/core.py key_chunks)."""
        in_use = await self.redis.smembers(self.names.account(account, "roles"))
        if LISTED not in in_use:
            return await self._count_roles(account, self.key_chunks(account, chunk), True)
        roles = sorted(role for role in in_use if is_role(role))
        async with self.redis.pipeline(transaction=False) as pipe:
            for role in roles:
                pipe.hget(*counts_of(self.names.role_holders(account, role)))
            sizes = [int(n or 0) for n in await pipe.execute()]
        return {role: int(n) for role, n in zip(roles, sizes, strict=True) if n}

    async def _by_ranks(self, index: str, chunk: int) -> AsyncIterator[list[str]]:
        start = 0
        while names := await self.redis.zrange(index, start, start + chunk - 1):
            yield names
            start += chunk

    async def _count_roles(self, account: str, chunks: AsyncIterator[list[str]],
                           generated: bool) -> dict[str, int]:
        """Roles counted by reading the grant in ``account`` of every key named, a chunk
        at a time: the account's own (``generated``) or external keys."""
        counts: dict[str, int] = {}
        async for names in chunks:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(self.names.key(name), ["acct", "g:" + account])
                rows = await pipe.execute()
            for owner, raw in rows:
                # a deleted key keeps no owner; each index counts its own kind
                if owner is None or (owner == account) != generated:
                    continue
                grant = Grant.decode(raw)
                for role in dict.fromkeys(grant.roles if grant else ()):
                    counts[role] = counts.get(role, 0) + 1
        return counts

    @unavailable
    async def announced_policy(self) -> PolicyAnnouncement | None:
        """The policy version the deployment announced last, or None."""
        found = await self.redis.hgetall(self.names.policy_record)
        if not found.get("version"):
            return None
        return PolicyAnnouncement(
            found["version"], found.get("by", ""), int(found.get("at") or 0),
            found.get("forced") == "1",
        )

    @unavailable
    async def announce_policy(
        self, announcement: PolicyAnnouncement, only_if_none: bool = False
    ) -> bool:
        """Write the announcement and publish its name on the invalidation channel, in
        one script; ``only_if_none``: leave an existing one alone (False then)."""
        done = await self.scripts.announce_policy(
            keys=[self.names.policy_record],
            args=[self.channel, "1" if only_if_none else "0", announcement.version,
                  announcement.by, announcement.at, "1" if announcement.forced else "0"],
        )
        return bool(done)
