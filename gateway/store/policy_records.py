"""What the store keeps for the policy: the version the deployment announced (every
instance compares its own with it, see gateway.policy.sync) and how many keys hold each
role (a reload refuses to drop a role still held)."""

from __future__ import annotations

from .core import StoreCore, unavailable
from .records import Grant, PolicyAnnouncement


class PolicyRecords(StoreCore):
    @unavailable
    async def role_holders(self, chunk: int = 500) -> dict[str, dict[str, int]]:
        """How many keys hold each role, per account they hold it in (account → role →
        count): generated keys in their own account, external keys in the accounts that
        granted them roles, active or not (an inactive key can be activated again).

        Reads every account's key and external-key indexes a chunk at a time, and only
        the grant fields: for checks a person starts (a policy reload, ``keygate policy
        check``), never for requests. Memory grows with accounts and roles, not keys."""
        accounts: set[str] = set()
        async for name in self.redis.scan_iter(match=self.names.accounts_pattern(), count=1000):
            record = self.names.account_record(name)
            if record is not None and record[1] in ("keys", "ext"):
                accounts.add(record[0])
        held: dict[str, dict[str, int]] = {}
        for account in sorted(accounts):
            counts: dict[str, int] = {}
            for what in ("keys", "ext"):
                index, start = self.names.account(account, what), 0
                while names := await self.redis.zrange(index, start, start + chunk - 1):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for name in names:
                            pipe.hmget(self.names.key(name), ["acct", "g:" + account])
                        rows = await pipe.execute()
                    for owner, raw in rows:
                        # a deleted key keeps no owner; each index counts its own kind
                        if owner is None or (owner == account) != (what == "keys"):
                            continue
                        grant = Grant.decode(raw)
                        for role in dict.fromkeys(grant.roles if grant else ()):
                            counts[role] = counts.get(role, 0) + 1
                    start += chunk
            if counts:
                held[account] = dict(sorted(counts.items()))
        return held

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
