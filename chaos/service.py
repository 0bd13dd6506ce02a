"""The service processes a chaos run starts: ``python -m service`` on the run's stack,
alone or as a supervisor of workers, its JSON log lines in a file of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time

from chaos.stack import PY, REPO, Stack

STOP_TIMEOUT_S = 60  # the service drains in shutdown_timeout_s (10 s), twice for a supervisor


class Service:
    def __init__(self, stack: Stack, name: str, processes: int = 1):
        self.name = name
        self.log_path = stack.work / f"service-{name}.log"
        self.port = stack.ports["service"]
        self.url = stack.service_url
        with open(self.log_path, "w") as out:
            self.popen = subprocess.Popen(
                [PY, "-m", "service", *stack.service_args(), "--port", str(self.port)],
                cwd=REPO,
                env=stack.service_env(SINGLETON_SERVER__PROCESSES=str(processes)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers share its group: one kill reaches them all
            )
        self.started = time.monotonic()

    def running(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        self.popen.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it and wait for its exit (a kill of its group past the deadline); its code."""
        if self.running():
            self.popen.send_signal(sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.running() and time.monotonic() < deadline:  # noqa: ASYNC110 (a child process, polled)
            await asyncio.sleep(0.05)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            await asyncio.to_thread(self.popen.wait, 10)
        return self.popen.returncode

    def lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def logged(self, message: str) -> list[dict]:
        return [line for line in self.lines() if line.get("msg") == message]

    def trouble(self) -> tuple[int, list[str]]:
        """What the log holds that always means a bug somewhere: tracebacks, and the event
        loop's own complaints (a task destroyed while pending, an exception never retrieved)."""
        text = self.log_path.read_text(errors="replace")
        loop = [line["msg"].split("\n")[0] for line in self.lines() if line.get("logger") == "asyncio"]
        return text.count("Traceback"), loop

    async def wait_logged(self, message: str, count: int = 1, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.logged(message)) < count:
            if not self.running():
                raise RuntimeError(f"service {self.name} exited ({self.popen.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"service {self.name}: {message!r} not logged {count}x within {timeout_s} s")
            await asyncio.sleep(0.1)
