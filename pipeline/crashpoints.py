"""Named points of the hand-off where a test can make this process die exactly as ``kill -9`` would.

``COLLECTOR_CRASH_AT=<name>`` in a stage's environment kills it with SIGKILL when it reaches that
point, so crash safety is tested at each step of the hand-off, not only at random moments.
Unset (always, in production) it costs one string comparison per call.
"""
from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("COLLECTOR_CRASH_AT", "")


def crash_point(name: str) -> None:
    if name == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
