"""What every background loop shares: telling an outage from a bug, and backing off.

A loop that a manager runs in the background (connecting, consuming, relaying,
probing, making the dev admin key) can fail in two ways, and says which:

- **an outage**: the error is one its dependency's manager calls unavailable
  (``BackingService.is_unavailable``). One warning when it starts, a reminder a
  minute while it lasts, one line when it ends. ``/health`` shows the dependency down.
- **a bug**: anything else (a broken migration, a typo, a store that refuses a
  document). Logged at ERROR with its traceback when it starts, a reminder a minute
  while it recurs, and counted in ``singleton_background_errors_total{task}``,
  which pages (deploy/prometheus/alerts.yml). It is never reported as an outage.

Either way the loop backs off and tries again: a bug does not end it for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from managers import metrics

T = TypeVar("T")
log = logging.getLogger("singleton.background")

REMIND_EVERY_S = 60.0  # while failures go on, one reminder line this often

IsOutage = Callable[[BaseException], bool]


def no_dependency(exc: BaseException) -> bool:
    """``is_outage`` for a task with no dependency of its own: every failure is a bug."""
    return False


class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``; ``reset()`` after a success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s, self.max_s = initial_s, max_s
        self.delay_s = initial_s

    def next(self) -> float:
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self.delay_s = self.initial_s

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())


class Failures:
    """The failures of one background task, logged once per run and counted when they are bugs.

    ``task`` names the loop (a label of ``singleton_background_errors_total``, created
    here so dashboards see a zero before the first failure); ``is_outage`` says which
    errors mean its dependency is unavailable; ``outage`` and ``recovered`` are the
    log messages of an outage's start and end.
    """

    def __init__(
        self,
        task: str,
        is_outage: IsOutage,
        logger: logging.Logger = log,
        outage: str = "dependency unreachable; retrying in the background",
        recovered: str = "dependency reachable again",
        fields: Mapping[str, object] | None = None,
    ) -> None:
        self.task = task
        self.is_outage = is_outage
        self.log = logger
        self.outage_message, self.recovered_message = outage, recovered
        self.fields = {"task": task, **(fields or {})}
        self.count = 0  # failures in a row
        self.kind: str | None = None  # "outage" or "bug" while failing, else None
        self._logged_at = 0.0
        self._errors = metrics.BACKGROUND_ERRORS.labels(task)

    @property
    def failing(self) -> bool:
        return self.kind is not None

    def failed(self, exc: BaseException) -> None:
        """Record one failure: logged if it starts a run (or changes its kind), or as a
        minute's reminder; a bug is counted every time."""
        kind = "outage" if self.is_outage(exc) else "bug"
        if kind == "bug":
            self._errors.inc()
        self.count += 1
        now = time.monotonic()
        starts = kind != self.kind
        if starts or now - self._logged_at >= REMIND_EVERY_S:
            self._logged_at = now
            fields = {**self.fields, "error": repr(exc)[:2000], "attempts": self.count}
            if kind == "outage":
                message = self.outage_message if starts else "still failing: " + self.outage_message
                self.log.warning(message, extra=fields)
            else:
                message = "background task failed: a bug, not an outage; retrying with backoff"
                self.log.error(message, exc_info=exc if starts else None, extra=fields)
        self.kind = kind

    def succeeded(self) -> None:
        if self.kind is not None:
            self.log.info(self.recovered_message, extra={**self.fields, "attempts": self.count + 1})
        self.kind, self.count = None, 0


async def reconnect(
    task: str,
    attempt: Callable[[], Awaitable[T]],
    is_outage: IsOutage,
    initial_delay_s: float,
    max_delay_s: float,
    dependency: str | None = None,
    fields: Mapping[str, object] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, backing off from ``initial_delay_s`` to ``max_delay_s``.

    Each attempt must carry its own deadline. An outage of the dependency is a few
    log lines, not thousands; any other error is a bug (see the module).
    """
    failures = Failures(task, is_outage, fields={"dependency": dependency or task, **(fields or {})})
    backoff = Backoff(initial_delay_s, max_delay_s)
    while True:
        try:
            result = await attempt()
        except Exception as exc:
            failures.failed(exc)
            await backoff.sleep()
            continue
        failures.succeeded()
        return result
