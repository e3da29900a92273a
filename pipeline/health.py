"""``/metrics``, ``/health`` and ``/ready`` of a stage, served from a thread on its metrics port.

Health is tied to progress: a stage whose loop has not turned recently is unhealthy, whatever else
it says. ``degraded`` names why: ``backpressure`` while drops happened in the last
``BACKPRESSURE_HOLD_SECS``, ``partial_connections`` when some but not all WebSockets are up,
``stale_streams`` when a stream is silent on a live connection.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

BACKPRESSURE_HOLD_SECS = 300.0
STALLED_LOOP_SECS = 30.0


class Health:
    def __init__(self, stage: str):
        self.stage = stage
        self.started = time.time()
        self.ready = False
        self.connections_total = 0
        self.connections_up = 0
        self.dropped: Callable[[], int] = lambda: 0
        self.last_drop: Callable[[], float | None] = lambda: None
        self.stale_streams: Callable[[], list[str]] = lambda: []
        self.details: Callable[[], dict] = lambda: {}
        self.records_total = 0  # records the stage handled; /health reports their rate
        self._progress = time.monotonic()
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)

    def progressed(self) -> None:
        self._progress = time.monotonic()
        self._samples.append((self._progress, self.records_total))

    def records_per_second(self) -> float:
        """Over the last ~10 s of loop turns."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self._samples if now - t <= 10.0]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def report(self) -> dict:
        now = time.monotonic()
        status, reasons = "healthy", []
        last_drop = self.last_drop()
        if now - self._progress > STALLED_LOOP_SECS:
            status, reasons = "unhealthy", ["stalled"]
        elif self.connections_total and self.connections_up == 0:
            status, reasons = "unhealthy", ["disconnected"]
        else:
            if last_drop is not None and now - last_drop < BACKPRESSURE_HOLD_SECS:
                reasons.append("backpressure")
            if 0 < self.connections_up < self.connections_total:
                reasons.append("partial_connections")
            stale = self.stale_streams()
            if stale:
                reasons.append("stale_streams")
            if reasons:
                status = "degraded"
        report = {
            "stage": self.stage,
            "pid": os.getpid(),
            "status": status,
            "degraded_reason": ",".join(reasons) if reasons else None,
            "uptime_seconds": int(time.time() - self.started),
            "ready": self.ready,
            "connections": {"up": self.connections_up, "total": self.connections_total},
            "messages_dropped": self.dropped(),
            "records_per_second": round(self.records_per_second(), 1),
            "stale_streams": self.stale_streams(),
        }
        report.update(self.details())
        return report


def serve(health: Health, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self._reply(200, orjson.dumps(health.report()), "application/json")
            elif path == "/ready":
                code = 200 if health.ready else 503
                self._reply(code, orjson.dumps({"ready": health.ready}), "application/json")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
