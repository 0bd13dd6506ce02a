"""The singleton shape every manager shares, and what a backing service adds to it.

A manager is a class-level singleton: ``start(config)`` builds the one instance
from the whole configuration and installs it on the class; ``instance()``
returns it; ``close()`` releases what it holds and clears the slot.

A ``BackingService`` is a manager that talks to a server of its own (MariaDB,
Redis, MongoDB, Kafka): it names its dependency, says which errors mean that
server is unavailable (as opposed to a bug), and answers a real round trip in
``ping()``. managers/dependencies.py lists them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar, Self


class NotStarted(RuntimeError):
    """A manager was used before ``start()`` (or after ``close()``)."""


class Manager:
    """Base for class-level singletons."""

    _instance: ClassVar[Manager | None] = None
    _task: asyncio.Task[Any] | None = None  # the loop of a manager that has one (connecting, consuming)
    # Where /health reports ``status()`` ("rate_limiter", "consumers.broadcast"), for a
    # manager that has a state of its own to report; service/lifecycle.py registers it.
    health_path: ClassVar[str | None] = None

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

    def status(self) -> dict[str, Any]:
        """For /health, at ``health_path``: a dict with a ``status`` (ok, down, error...)."""
        raise NotImplementedError

    def _run_in_background(self, loop: Coroutine[Any, Any, Any], name: str) -> None:
        """Start this manager's own loop; ``_stop_background`` ends it."""
        self._task = asyncio.create_task(loop, name=name)

    async def _stop_background(self, timeout_s: float) -> None:
        """Cancel the loop and give it ``timeout_s`` to end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout_s)


class BackingService(Manager):
    """A manager of one backing server; register a new one in managers/dependencies.py."""

    dependency: ClassVar[str]  # its name in /health, metrics and logs
    unavailable: ClassVar[tuple[type[BaseException], ...]]  # what a request answers with 503
    log_sources: ClassVar[tuple[str, ...]] = ()  # its client library's loggers, thinned out during an outage

    @classmethod
    def is_unavailable(cls, exc: BaseException) -> bool:
        """Whether ``exc`` means the server is unavailable (an outage), not a bug: what a
        background loop reports as an outage (managers/background.py). A subclass narrows
        it where its driver's error classes mix the two."""
        return isinstance(exc, cls.unavailable)

    async def ping(self) -> None:
        """A real round trip to the server, under its own deadline; raises if it fails."""
        raise NotImplementedError

    async def check(self) -> dict[str, Any]:
        """What /health reports of it: ``ping()``'s verdict, raising as it does. A service
        of several servers (MariaDB's shards) reports each, and ``degraded`` while the
        ones it cannot serve without answer."""
        await self.ping()
        return {"status": "ok"}
