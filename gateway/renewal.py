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


def renewal_alert(token_created_ms: int, period_months: int, now_ms: int) -> str:
    started = datetime.fromtimestamp(token_created_ms / 1000, UTC)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    if now < add_months(started, period_months):
        return "none"
    if now < add_months(started, period_months + RED_AFTER_MONTHS):
        return "orange"
    return "red"
