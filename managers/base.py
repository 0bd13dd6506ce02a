"""The singleton shape every manager shares, and bounded connect retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

T = TypeVar("T")
log = logging.getLogger("singleton.managers")


class NotStarted(RuntimeError):
    """A manager was used before ``start()`` (or after ``close()``)."""


class Manager:
    """Base for class-level singletons.

    ``start()`` builds the one instance and stores it on the class;
    ``instance()`` returns it; ``close()`` releases it and clears the slot.
    """

    _instance: ClassVar[Manager | None] = None

    @classmethod
    def instance(cls: type[T]) -> T:
        inst = cls.__dict__.get("_instance")
        if inst is None:
            raise NotStarted(f"{cls.__name__} is not started")
        return inst

    @classmethod
    def started(cls) -> bool:
        return cls.__dict__.get("_instance") is not None

    @classmethod
    def _install(cls, inst: Manager) -> None:
        if cls.started():
            raise RuntimeError(f"{cls.__name__} is already started")
        cls._instance = inst

    @classmethod
    def _uninstall(cls) -> None:
        cls._instance = None


async def with_retries(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    attempts: int,
    delay_s: float,
) -> T:
    """Run ``attempt`` until it succeeds, at most ``attempts`` times.

    Each attempt must carry its own deadline. The last error is raised with the
    dependency named, so startup can report what it could not reach.
    """
    last: BaseException | None = None
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except Exception as exc:  # any driver error: retry, then report it
            last = exc
            log.warning(
                "connect failed",
                extra={"dependency": what, "attempt": n, "attempts": attempts, "error": repr(exc)},
            )
            if n < attempts:
                await asyncio.sleep(delay_s)
    raise DependencyUnavailable(what, last)


class DependencyUnavailable(RuntimeError):
    def __init__(self, dependency: str, cause: BaseException | None):
        super().__init__(f"{dependency} unavailable: {cause!r}")
        self.dependency = dependency
        self.cause = cause
