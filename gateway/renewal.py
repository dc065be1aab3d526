"""Renewal reminders: how overdue a token is for renewal. Pure; tokens never expire.

The clock starts at ``creationDateToken`` (the key's creation or its latest finished
renewal). Before ``period`` months have passed the alert is ``none``; from then on it is
``orange``; from ``period + 3`` months on it is ``red``. Months are calendar months
(31 January + 1 month = 28/29 February), as people count them.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

RENEWAL_PERIODS = (3, 6)
DEFAULT_RENEWAL_PERIOD = 3
RED_AFTER_MONTHS = 3
ALERTS = ("none", "orange", "red")


def add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def alert_starts(token_created_ms: int, period_months: int) -> tuple[datetime, datetime]:
    """When the alert of a token issued at ``token_created_ms`` turns orange, and red."""
    started = datetime.fromtimestamp(token_created_ms / 1000, UTC)
    return (add_months(started, period_months),
            add_months(started, period_months + RED_AFTER_MONTHS))


def renewal_alert(token_created_ms: int, period_months: int, now_ms: int) -> str:
    orange, red = alert_starts(token_created_ms, period_months)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    if now < orange:
        return "none"
    if now < red:
        return "orange"
    return "red"


def alert_since(token_created_ms: int, alert: str, period_months: int) -> int | None:
    """Since when (ms) the token's alert is ``alert``; None for ``none``."""
    if alert == "none":
        return None
    orange, red = alert_starts(token_created_ms, period_months)
    return round((red if alert == "red" else orange).timestamp() * 1000)


def _first_at_least(level: str, period_months: int, now_ms: int) -> int:
    """The earliest token date (ms, ≥ 0) whose alert is ``level`` or a lesser one: later
    tokens are less overdue, so the alerts are ranges of token dates, found by bisection
    on :func:`renewal_alert` itself (calendar months make them uneven)."""
    rank = ALERTS.index(level)
    low, high = 0, now_ms + 1  # a token issued now is at "none"
    while low < high:
        middle = (low + high) // 2
        if ALERTS.index(renewal_alert(middle, period_months, now_ms)) <= rank:
            high = middle
        else:
            low = middle + 1
    return low


def alert_range(level: str, period_months: int, now_ms: int) -> tuple[int | None, int | None]:
    """The token dates (ms) at ``level`` now: ``[start, end)``, None for no bound."""
    none_from = _first_at_least("none", period_months, now_ms)
    orange_from = _first_at_least("orange", period_months, now_ms)
    if level == "none":
        return none_from, None
    if level == "orange":
        return orange_from, none_from
    return None, orange_from
