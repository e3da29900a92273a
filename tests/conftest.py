"""Shared test helpers: where the recorded exchange frames are, free ports, polling with a deadline."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("COLLECTOR_FIXTURES", REPO.parent / "shared" / "fixtures"))

T = TypeVar("T")


def fixture_lines(relative: str) -> list[bytes]:
    """The frames of one recorded fixture file, one per line, as received (bytes)."""
    path = FIXTURES / relative
    if not path.exists():
        pytest.fail(f"fixture {path} is missing; set COLLECTOR_FIXTURES to the shared/fixtures folder")
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """Polls ``condition`` until it returns something truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the condition may fail until the thing is up
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
