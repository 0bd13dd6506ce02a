"""The singleton shape every manager shares, and the reconnect loop of a dependency.

A manager is a class-level singleton: ``start(config)`` builds the one instance
from the whole configuration and installs it on the class; ``instance()``
returns it; ``close()`` releases what it holds and clears the slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, Self, TypeVar

T = TypeVar("T")
log = logging.getLogger("singleton.managers")

STILL_DOWN_EVERY_S = 60.0  # while a dependency stays unreachable, one reminder line this often


class NotStarted(RuntimeError):
    """A manager was used before ``start()`` (or after ``close()``)."""


class Manager:
    """Base for class-level singletons."""

    _instance: ClassVar[Manager | None] = None
    _task: asyncio.Task[Any] | None = None  # the loop of a manager that has one (connecting, consuming)

    @classmethod
    def instance(cls) -> Self:
        inst: Self | None = cls.__dict__.get("_instance")
        if inst is None:
            raise NotStarted(f"{cls.__name__} is not started")
        return inst

    @classmethod
    def started(cls) -> bool:
        return cls.__dict__.get("_instance") is not None

    @classmethod
    def _install(cls, inst: Self) -> Self:
        if cls.started():
            raise RuntimeError(f"{cls.__name__} is already started")
        cls._instance = inst
        return inst

    async def close(self) -> None:
        """Release what the instance holds; the slot is cleared even if that fails."""
        try:
            await self.release()
        finally:
            if type(self).__dict__.get("_instance") is self:  # a newer instance keeps its slot
                type(self)._instance = None

    async def release(self) -> None:
        """What ``close()`` releases: connections, tasks. Nothing by default."""

    def _run_in_background(self, loop: Coroutine[Any, Any, Any], name: str) -> None:
        """Start this manager's own loop; ``_stop_background`` ends it."""
        self._task = asyncio.create_task(loop, name=name)

    async def _stop_background(self, timeout_s: float) -> None:
        """Cancel the loop and give it ``timeout_s`` to end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout_s)


async def reconnect(what: str, attempt: Callable[[], Awaitable[T]], initial_delay_s: float, max_delay_s: float) -> T:
    """Run ``attempt`` until it succeeds, backing off from ``initial_delay_s`` to ``max_delay_s``.

    Each attempt must carry its own deadline. The log gets one line when the
    dependency is first found unreachable, a reminder a minute while it stays so,
    and one line when it answers again: an outage is a few lines, not thousands.
    """
    delay, failures, reminded = initial_delay_s, 0, 0.0
    while True:
        try:
            result = await attempt()
        except Exception as exc:  # any driver error: wait and try again
            failures += 1
            now = time.monotonic()
            if failures == 1:
                log.warning("dependency unreachable; retrying in the background", extra=_fields(what, exc))
                reminded = now
            elif now - reminded >= STILL_DOWN_EVERY_S:
                log.warning("dependency still unreachable", extra={**_fields(what, exc), "attempts": failures})
                reminded = now
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        if failures:
            log.info("dependency reachable again", extra={"dependency": what, "attempts": failures + 1})
        return result


def _fields(what: str, exc: BaseException) -> dict[str, str]:
    return {"dependency": what, "error": repr(exc)[:500]}
