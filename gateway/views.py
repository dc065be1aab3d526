"""What keys, grants, audit events and account settings look like from outside: the
JSON views the management API answers with and ``keygate … --json`` prints, in one
place, so both always agree.

A view is a whitelist: a field appears because it is written here, never because the
record has it. Token digests and link ids are therefore absent by construction, not
by a filter someone could forget.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .renewal import DEFAULT_RENEWAL_PERIOD, renewal_alert
from .store import AuditEvent, ExternalKey, KeyRecord


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 in UTC (``…T12:00:00.000Z``)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def key_json(record: KeyRecord, period_months: int, now_ms: int) -> dict[str, Any]:
    """The public view of a generated key. Token digests are deliberately not part of it."""
    return {
        "appKey": record.app_key,
        "label": record.label,
        "roles": list(record.roles),
        "status": record.status,
        "creationDate": iso(record.created),
        "creationDateToken": iso(record.token_created),
        "creationDateNewToken": iso(record.new_token_created),
        "renewalAlert": renewal_alert(record.token_created, period_months, now_ms),
        "lastUsed": iso(record.last_used),
    }


def external_json(key: ExternalKey) -> dict[str, Any]:
    """An external key as the granting account sees it: its grant and its owner."""
    return {
        "appKey": key.app_key,
        "label": key.label,
        "roles": list(key.roles),
        "status": key.status,
        "account": key.owner,
        "addedDate": iso(key.added),
    }


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": iso(event.time),
        "account": event.account,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "requestId": event.request_id,
        "before": event.before,
        "after": event.after,
    }


def renewal_period_months(stored: Mapping[str, Any]) -> int:
    """The renewal-reminder period of an account, from its stored settings."""
    return int(stored.get("renewalPeriodMonths", DEFAULT_RENEWAL_PERIOD))


def account_settings_json(stored: Mapping[str, Any]) -> dict[str, Any]:
    return {"renewalPeriodMonths": renewal_period_months(stored)}
