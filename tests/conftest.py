"""Shared test helpers: where the recorded exchange frames are, free ports, polling with a deadline."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import pytest

from benchmarks.common import free_port  # noqa: F401 - shared with the tests

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("COLLECTOR_FIXTURES", REPO.parent / "shared" / "fixtures"))

T = TypeVar("T")


def fixture_lines(relative: str) -> list[bytes]:
    """The frames of one recorded fixture file, one per line, as received (bytes)."""
    path = FIXTURES / relative
    if not path.exists():
        pytest.fail(f"fixture {path} is missing; set COLLECTOR_FIXTURES to the shared/fixtures folder")
    return [line for line in path.read_bytes().splitlines() if line.strip()]


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


def topology_ports_in_use(exchanges: Sequence[str]) -> list[int]:
    """The shipped topology's fixed ports (stages' metrics, ZeroMQ, simulators) that something listens on."""
    from pipeline import topology

    ports = [s.metrics_port for s in topology.stages(exchanges)] + [5555, 5556]
    ports += [topology.SIMULATOR_PORTS[e] for e in exchanges]
    busy = []
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@contextlib.contextmanager
def collector_run(folder: Path, exchanges: Sequence[str]) -> Iterator[tuple[subprocess.Popen, dict]]:
    """``collector run --simulate`` (real supervisord, the shipped topology's fixed ports) in ``folder``;
    stopped with SIGTERM at the end, and its ports free again before the next test takes them."""
    assert not topology_ports_in_use(exchanges), f"ports of the shipped topology are in use: {topology_ports_in_use(exchanges)}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATA_DIR": str(folder / "data"), "ARCHIVE_URL": str(folder / "archive"),
           "LOG_DIR": str(folder / "logs"), "BATCH_INTERVAL": "1"}
    env.pop("BUCKET_NAME", None)
    with open(folder / "run.out", "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "stages.cli", "run", "--simulate", "--exchanges", ",".join(exchanges)],
                                   cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process, env
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    wait_for(lambda: not topology_ports_in_use(exchanges), 30, what="the topology's ports to be free again")
