"""More than one core: ``server.processes: N`` runs N single-reactor worker processes
that share the API port, under one supervisor.

The supervisor binds the port once (``SO_REUSEPORT`` set, so another supervisor, a
new release, can bind beside it) and hands the socket to each worker, a
``python -m service`` of its own with its own managers, broadcast consumer and
event loop. Sharing one socket means sharing one accept queue: a worker that
stops accepting leaves new connections to the others, none is dropped.

Each worker also serves ``/metrics`` and ``/health/live|ready`` on a port of its own
(``metrics.port`` + its index), where Prometheus scrapes it and the supervisor asks
whether it is ready. Signals to the supervisor:

- SIGHUP: a rolling restart, one worker at a time: start its replacement, wait until
  it is ready, then stop the old one, which drains before it exits.
- SIGTERM / SIGINT: stop every worker (each drains) and exit.

A worker that dies is started again, after a backoff if it keeps dying. A failure
of the supervisor's own work (starting a worker, a rolling restart) is a bug, not
an outage: logged with its traceback, and tried again with backoff (a restart at
the next SIGHUP); the supervisor keeps its other workers running either way. It
serves no /metrics of its own: its workers do, and its log is where this shows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import tornado.netutil

from managers.background import Backoff, Failures, no_dependency
from managers.config import Config

log = logging.getLogger("singleton.supervisor")

READY_TIMEOUT_S = 60.0  # a replacement that is not ready by then is stopped, and the old one kept
RESTART_BACKOFF_S = (0.5, 10.0)


class Worker:
    """One worker process and the ports it answers on."""

    def __init__(self, index: int, ops_port: int, proc: asyncio.subprocess.Process):
        self.index = index
        self.ops_port = ops_port
        self.proc = proc
        self.retiring = False  # being replaced or stopped: its exit is expected

    async def ready(self, timeout_s: float) -> bool:
        """Whether it answers /health/ready with 200 within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.ops_port}/health/ready"
        while time.monotonic() < deadline and self.proc.returncode is None:
            ok = await asyncio.to_thread(_get_ok, url)
            if ok:
                return True
            await asyncio.sleep(0.2)
        return False

    async def stop(self, timeout_s: float) -> None:
        self.retiring = True
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            log.warning("worker did not stop in time; killing it", extra={"worker": self.index})
            self.proc.kill()
            await self.proc.wait()


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            status: int = response.status  # urlopen's result is typed Any
            return status == 200
    except OSError:
        return False


class Supervisor:
    def __init__(self, config: Config, argv: list[str]):
        self.config = config
        self.argv = argv  # passed on to each worker (--config, --role)
        self.processes: int = config["server"]["processes"]
        self.stop_timeout_s: float = config["server"]["shutdown_timeout_s"] * 2 + 15
        self.workers: dict[int, Worker] = {}
        self._stopping = asyncio.Event()
        self._restart = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()
        self._restart_failures = Failures("supervisor_rolling_restart", no_dependency, logger=log)

    async def run(self) -> int:
        server = self.config["server"]
        [listener] = tornado.netutil.bind_sockets(server["port"], server["host"], reuse_port=True)
        listener.set_inheritable(True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._restart.set)
        self.listener = listener
        for index in range(self.processes):
            self.workers[index] = await self._spawn(index, join_when_ready=False)
        log.info("supervising", extra={"workers": self.processes, "port": server["port"], "pid": os.getpid()})
        while not self._stopping.is_set():
            stop = asyncio.ensure_future(self._stopping.wait())
            restart = asyncio.ensure_future(self._restart.wait())
            await asyncio.wait({stop, restart}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            restart.cancel()
            if self._restart.is_set() and not self._stopping.is_set():
                self._restart.clear()
                try:
                    await self.rolling_restart()
                except Exception as exc:  # the workers not yet replaced keep serving
                    self._restart_failures.failed(exc)
                else:
                    self._restart_failures.succeeded()
        log.info("stopping every worker")
        await asyncio.gather(*(w.stop(self.stop_timeout_s) for w in self.workers.values()))
        for task in self._watchers:
            task.cancel()
        listener.close()
        log.info("stopped")
        return 0

    async def rolling_restart(self) -> None:
        """Each worker in turn: its replacement first, ready, then the old one drains and exits."""
        log.info("rolling restart")
        for index in sorted(self.workers):
            if self._stopping.is_set():
                return
            old = self.workers[index]
            new = await self._spawn(index, ops_port=self._spare_port(index, old.ops_port))
            if not await new.ready(READY_TIMEOUT_S):
                log.error("replacement never became ready; keeping the old worker", extra={"worker": index})
                await new.stop(self.stop_timeout_s)
                continue
            self.workers[index] = new
            await old.stop(self.stop_timeout_s)
            log.info("worker replaced", extra={"worker": index, "pid": new.proc.pid})
        log.info("rolling restart done")

    def _spare_port(self, index: int, port: int) -> int:
        """The replacement's ops port while the old worker still holds ``port``: the
        worker's own, or the one N above it, in turn."""
        base = self.config["metrics"]["port"]
        if not base:
            return 0
        return base + index + self.processes if port == base + index else base + index

    async def _spawn(self, index: int, ops_port: int | None = None, join_when_ready: bool = True) -> Worker:
        """A worker; it takes connections once ready, except at the first start (then
        the port answers at once, 503 until ready, as a single process does)."""
        base = self.config["metrics"]["port"]
        if ops_port is None:
            ops_port = base + index if base else 0
        if not ops_port:
            ops_port = free_port()
        env = {
            **os.environ,
            "SINGLETON_METRICS__PORT": str(ops_port),
            "SINGLETON_SERVER__PROCESSES": "1",
        }
        log_file = self.config["logging"]["file"]
        if log_file:  # one file per worker: a rotating file has one writer
            path = Path(log_file)
            env["SINGLETON_LOGGING__FILE"] = str(path.with_name(f"{path.stem}.{index}{path.suffix}"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            *self.argv,
            "--listen-fd",
            str(self.listener.fileno()),
            *(["--join-when-ready"] if join_when_ready else []),
            env=env,
            pass_fds=(self.listener.fileno(),),
        )
        worker = Worker(index, ops_port, proc)
        task = asyncio.create_task(self._watch(worker))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return worker

    async def _watch(self, worker: Worker) -> None:
        """Start a worker again if it dies on its own (not when stopped or replaced)."""
        started = time.monotonic()
        code = await worker.proc.wait()
        if worker.retiring or self._stopping.is_set():
            return
        delay = RESTART_BACKOFF_S[0] if time.monotonic() - started > 60 else RESTART_BACKOFF_S[1]
        log.error("worker died; starting it again", extra={"worker": worker.index, "code": code, "in_s": delay})
        await asyncio.sleep(delay)
        failures = Failures("supervisor_respawn", no_dependency, logger=log, fields={"worker": worker.index})
        backoff = Backoff(*RESTART_BACKOFF_S)
        while not self._stopping.is_set() and self.workers.get(worker.index) is worker:
            try:
                self.workers[worker.index] = await self._spawn(worker.index, worker.ops_port)
            except Exception as exc:  # e.g. out of processes or file descriptors: try again
                failures.failed(exc)
                await backoff.sleep()
                continue
            failures.succeeded()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a child process to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # an (address, port) pair, typed Any
        return port
