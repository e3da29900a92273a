"""Small helpers shared by the benchmark modules: the machine, versions, /metrics scraping, stats."""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import random
import re
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pyzmq", "websocket-client", "duckdb", "pyarrow", "orjson", "prometheus-client", "psutil", "moto")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import psutil

    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    try:
        import zmq

        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return out


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port, free now, never handed out before in this process, outside the ephemeral range.

    A port from bind(("127.0.0.1", 0)) is an ephemeral one: between this call and the bind of the process
    under test, any outgoing connection on the machine may take it as its local port (CI saw archive's
    metrics port taken that way). Ports below the ephemeral range are only ever taken by a bind.
    """
    low, high = _ephemeral_range()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    while True:
        port = random.choice(candidates)
        if port in _HANDED_OUT:
            continue
        _HANDED_OUT.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


# -- Prometheus text -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append((name, dict(_LABEL.findall(labels or "")), number))
    return samples


def metric(samples: Iterable[tuple[str, dict, float]], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when there is none)."""
    total = 0.0
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total


def scrape(port: int, timeout: float = 2.0) -> list[tuple[str, dict, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return parse_metrics(response.read().decode())


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    return False


# -- numbers -------------------------------------------------------------------------------------------

def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points."""
    fit = slope_and_error(points)
    return fit[0] if fit else None


def slope_and_error(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares slope of (x, y) points and its standard error (0 with fewer than three points)."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    if n < 3:
        return b, 0.0
    residuals = sum((y - my - b * (x - mx)) ** 2 for x, y in points)
    return b, math.sqrt(residuals / (n - 2) / sxx)


def python() -> str:
    return sys.executable
