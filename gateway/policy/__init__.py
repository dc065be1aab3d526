"""Policies as code: the only package that imports casbin.

``files``: reading and checking the policy files, the loaded :class:`Policy` and its
decisions. The tools a security team runs over the same files sit beside it: ``lint``
with ``analysis`` (``keygate policy check``), ``tables`` with ``table_runner`` (decision
tables, ``keygate policy test``), ``explain`` (which lines decided, through which
inheritance), ``diff`` (what a change does to every role's permissions); ``delegation``
is the escalation rule (who may assign which role), ``reading`` the lines of a caller
indexed for it (and the meter that bounds an explanation's work), ``names`` the names a
policy uses, and ``sync`` keeps one policy version across instances.
"""

from .files import (
    EFFECTS,
    Policy,
    PolicyLine,
    parse_policy_files,
    pattern_matches,
    patterns_overlap,
)

__all__ = [
    "EFFECTS", "Policy", "PolicyLine", "parse_policy_files", "pattern_matches",
    "patterns_overlap",
]
