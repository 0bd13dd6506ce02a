"""A test knob: kill this process at a named point, to test what a crash leaves behind.

A child process started with ``SINGLETON_CRASH_AT=<name>`` SIGKILLs itself when it
reaches ``crashpoint(<name>)``: no cleanup runs, as after a power cut. Unset (always,
outside those tests), a crash point costs one comparison.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("SINGLETON_CRASH_AT") or None


def crashpoint(name: str) -> None:
    if name == _AT:
        os.kill(os.getpid(), signal.SIGKILL)
