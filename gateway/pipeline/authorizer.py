"""The authorizer: do these roles allow this action on this resource in this account?

:class:`Authorizer` is the interface; :class:`CasbinAuthorizer` answers from the Casbin
policy (``gateway.policy``, the only module that imports casbin) through a decision
cache. Reloading the policy swaps :attr:`CasbinAuthorizer.policy` in one assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..cache import LRU
from ..policy import Policy

if TYPE_CHECKING:
    from ..series import PipelineMetrics


class Authorizer(Protocol):
    policy: Policy

    def decide(self, roles: Sequence[str], account: str, resource: str, action: str) -> bool:
        """Allowed when some role allows and no role denies."""
        ...


class CasbinAuthorizer:
    def __init__(
        self,
        policy: Policy,
        cache_size: int = 100_000,
        metrics: PipelineMetrics | None = None,
    ):
        self.policy = policy
        # decision-cache counts; None (metrics off): nothing is counted
        self.metrics = metrics
        self._decisions: LRU[tuple[str, tuple[str, ...], str, str, str], bool] = LRU(
            cache_size
        )

    def decide(self, roles: Sequence[str], account: str, resource: str, action: str) -> bool:
        """The policy's decision, cached under everything it depends on.

        The key holds the policy version, so swapping in a reloaded policy makes every
        cached decision of the old one unreachable (they age out of the LRU); leaving an
        element out of the key is the Oathkeeper CVE-2021-32701 class of bug.
        """
        policy = self.policy
        key = (policy.version, tuple(sorted(roles)), account, resource, action)
        decisions = self._decisions
        allowed = decisions.get(key)
        metrics = self.metrics
        if allowed is None:
            allowed = policy.decide(roles, account, resource, action)
            if metrics is not None:
                metrics.decision_miss()
                if len(decisions) >= decisions.size:
                    metrics.decision_evicted()  # the put below drops the oldest decision
            decisions.put(key, allowed)
        elif metrics is not None:
            metrics.decision_hit()
        return allowed
