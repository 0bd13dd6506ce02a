"""/api/v1/analytics: per-user statistics and a time-window summary, from MongoDB."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from domain import analytics, codec, users
from domain.errors import APIError
from handlers.base import BaseHandler

MAX_WINDOW = dt.timedelta(days=366)


def _query_time(value: str, name: str) -> dt.datetime:
    try:
        return codec.parse_rfc3339(value)
    except ValueError:
        message = f"{name} must be an RFC 3339 time with a zone, such as 2026-01-31T00:00:00Z, in the years 1 to 9999"
        raise APIError(400, "invalid_time", message) from None


class UserAnalyticsHandler(BaseHandler):
    async def get(self, user_id: str) -> None:
        user_id = self.visible_user_id(user_id)
        stats = await analytics.user_stats(user_id)
        if stats is None:
            if not await users.exists(user_id):
                raise APIError(404, "not_found", f"user {user_id} not found")
            stats = {**analytics.totals(Counter()), "last_activity": None}
        last = stats.get("last_activity")
        self.write_json({"user_id": user_id, **stats, "last_activity": codec.rfc3339(last) if last else None})


def _whole_minute(t: dt.datetime) -> dt.datetime:
    return t.replace(second=0, microsecond=0)


class SummaryHandler(BaseHandler):
    admin_only = True  # totals across every user

    async def get(self) -> None:
        now = dt.datetime.now(dt.UTC)
        raw_from, raw_to = self.query("from"), self.query("to")
        end = _query_time(raw_to, "to") if raw_to is not None else now  # `?to=` is a bad time, not no time
        try:
            start = _query_time(raw_from, "from") if raw_from is not None else end - dt.timedelta(days=1)
        except OverflowError:  # the default window would start before year 1
            raise APIError(400, "invalid_window", "to is too early for the default one-day window") from None
        if start >= end:
            raise APIError(400, "invalid_window", "from must be before to")
        if end - start > MAX_WINDOW:
            raise APIError(400, "invalid_window", "the window may span at most 366 days")
        # Totals are kept per minute: the window used is [from, to) with both rounded down.
        start, end = _whole_minute(start), _whole_minute(end)
        if start == end:
            raise APIError(400, "invalid_window", "from and to fall in one minute; the summary counts whole minutes")
        summary = await analytics.summary(start, end)
        self.write_json({"from": codec.rfc3339(start), "to": codec.rfc3339(end), **summary})


default_handlers = [
    (r"/api/v1/analytics/users/([^/]+)", UserAnalyticsHandler),
    (r"/api/v1/analytics/summary", SummaryHandler),
]
