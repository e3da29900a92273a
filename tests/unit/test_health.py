"""pipeline/health.py: the states of /health, and the HTTP server's /metrics, /health and /ready."""
from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client import REGISTRY, Counter

from pipeline import health
from pipeline.health import BACKPRESSURE_HOLD_SECS, STALLED_LOOP_SECS, Health


class Clock:
    """Stands in for the ``time`` module inside pipeline.health only."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0):
        self.mono, self.wall = monotonic, wall

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(health, "time", fake)
    return fake


def state(clock, **attributes) -> Health:
    h = Health("ingest-binance")
    for name, value in attributes.items():
        setattr(h, name, value)
    return h


def status(h: Health) -> tuple[str, str | None]:
    report = h.report()
    return report["status"], report["degraded_reason"]


def test_a_fresh_stage_is_healthy(clock):
    assert status(state(clock)) == ("healthy", None)


def test_all_connections_up_is_healthy(clock):
    assert status(state(clock, connections_total=3, connections_up=3)) == ("healthy", None)


def test_a_drop_makes_it_degraded_backpressure_for_a_while(clock):
    h = state(clock)
    h.last_drop = lambda: clock.mono  # dropped just now
    assert status(h) == ("degraded", "backpressure")
    drop_time = clock.mono
    h.last_drop = lambda: drop_time
    clock.advance(BACKPRESSURE_HOLD_SECS - 1)
    h.progressed()
    assert status(h) == ("degraded", "backpressure")
    clock.advance(2)
    h.progressed()
    assert status(h) == ("healthy", None)


def test_some_connections_down_is_degraded_partial_connections(clock):
    assert status(state(clock, connections_total=2, connections_up=1)) == ("degraded", "partial_connections")


def test_a_silent_stream_on_a_live_connection_is_degraded_stale_streams(clock):
    h = state(clock, connections_total=1, connections_up=1, stale_streams=lambda: ["binance:btcusdt:trade"])
    assert status(h) == ("degraded", "stale_streams")
    assert h.report()["stale_streams"] == ["binance:btcusdt:trade"]


def test_several_reasons_are_all_named(clock):
    h = state(clock, connections_total=2, connections_up=1, last_drop=lambda: clock.mono,
              stale_streams=lambda: ["okx:BTC-USDT:orderbook"])
    assert status(h) == ("degraded", "backpressure,partial_connections,stale_streams")


def test_all_connections_down_is_unhealthy(clock):
    assert status(state(clock, connections_total=2, connections_up=0))[0] == "unhealthy"


def test_a_stage_without_connections_is_not_judged_by_them(clock):
    assert status(state(clock, connections_total=0, connections_up=0)) == ("healthy", None)


def test_a_stalled_loop_is_unhealthy_whatever_else_it_says(clock):
    h = state(clock, connections_total=2, connections_up=2)
    clock.advance(STALLED_LOOP_SECS - 0.5)
    assert status(h)[0] == "healthy"
    clock.advance(1.0)
    assert status(h) == ("unhealthy", "stalled")
    h.progressed()
    assert status(h) == ("healthy", None)


def test_the_report_has_the_spec_fields(clock):
    h = state(clock, connections_total=4, connections_up=4, dropped=lambda: 17)
    clock.advance(42)
    h.progressed()
    report = h.report()
    assert report["status"] == "healthy" and report["degraded_reason"] is None
    assert report["uptime_seconds"] == 42
    assert report["connections"] == {"up": 4, "total": 4}
    assert report["messages_dropped"] == 17
    assert report["stage"] == "ingest-binance"


def test_details_are_added_to_the_report(clock):
    h = state(clock, details=lambda: {"buffered_records": 5})
    assert h.report()["buffered_records"] == 5


# -- the HTTP server

def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


_SERVED = Health("check")


@pytest.fixture(scope="module")
def server_port():
    """One server for the module (shutting one down waits out its 0.5 s poll)."""
    server = health.serve(_SERVED, "127.0.0.1", 0)  # port 0: the kernel picks a free one
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(server_port):
    """The served Health, fresh for each test: the server reads this very object."""
    _SERVED.__init__("check")
    return _SERVED, server_port


def test_metrics_are_prometheus_text_with_the_registered_metrics(served):
    _, port = served
    probe = Counter("collector_unit_probe", "a metric only this test registers", registry=REGISTRY)
    try:
        probe.inc(3)
        code, content_type, body = get(port, "/metrics")
    finally:
        REGISTRY.unregister(probe)
    assert code == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert "# TYPE collector_unit_probe_total counter" in text
    assert "collector_unit_probe_total 3.0" in text


def test_health_is_json_with_the_spec_fields(served):
    h, port = served
    h.connections_total, h.connections_up = 2, 1
    h.dropped = lambda: 9
    code, content_type, body = get(port, "/health")
    report = orjson.loads(body)
    assert code == 200 and content_type == "application/json"
    assert {"status", "degraded_reason", "uptime_seconds", "connections", "messages_dropped"} <= set(report)
    assert (report["status"], report["degraded_reason"]) == ("degraded", "partial_connections")
    assert report["connections"] == {"up": 1, "total": 2}
    assert report["messages_dropped"] == 9
    assert isinstance(report["uptime_seconds"], int) and report["uptime_seconds"] >= 0


def test_ready_is_503_until_the_stage_says_ready_then_200(served):
    h, port = served
    code, _, body = get(port, "/ready")
    assert code == 503 and orjson.loads(body) == {"ready": False}
    h.ready = True
    code, _, body = get(port, "/ready")
    assert code == 200 and orjson.loads(body) == {"ready": True}


@pytest.mark.parametrize("path, code", [("/health?verbose=1", 200), ("/nothing", 404), ("/", 404)])
def test_other_paths(served, path, code):
    _, port = served
    assert get(port, path)[0] == code
