"""S3 endpoints that misbehave, in front of moto's real S3 server (tests/e2e/s3.py), on 127.0.0.1.

``LatencyProxy``: a TCP proxy that forwards in small chunks and sleeps before each one (a slow or
far-away store). ``ErrorProxy``: an HTTP proxy that answers 500/503 with S3's XML error body while
``failing`` is set (or for the first ``fail_first`` requests; only for ``methods`` when given), and
forwards to moto otherwise.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import free_port
from tests.e2e.s3 import pipe


class LatencyProxy:
    def __init__(self, upstream: int, delay: float, chunk: int = 16384):
        self.upstream, self.delay, self.chunk = upstream, delay, chunk
        self.port = free_port()
        self.chunks = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=(source, sink, self.chunk, self._delay), daemon=True).start()

    def _delay(self) -> None:
        time.sleep(self.delay)
        self.chunks += 1

    def close(self) -> None:
        self._listener.close()


ERROR_BODY = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test"
              "</Message><RequestId>fault</RequestId></Error>")


class ErrorProxy:
    """HTTP/1.1 proxy to moto that fails requests on demand with 500 InternalError / 503 SlowDown."""

    def __init__(self, upstream: int, fail_first: int = 0, methods: tuple[str, ...] = ()):
        self.upstream, self.methods = upstream, methods
        self.failing = threading.Event()
        self.fail_first = fail_first
        self.requests = self.failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    fail = proxy.failing.is_set() or proxy.requests <= proxy.fail_first
                    fail = fail and (not proxy.methods or self.command in proxy.methods)
                    if fail:
                        proxy.failed += 1
                        status = 503 if proxy.failed % 2 else 500
                if fail:
                    payload = ERROR_BODY.format(code="SlowDown" if status == 503 else "InternalError").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(key, value)
                # a HEAD answer tells the object's size without a body
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
