"""A real S3 endpoint on loopback for tests: moto's server, behind a TCP proxy that can cut it off."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Callable

from tests.conftest import free_port, wait_for

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-log"}


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.popen = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _accepts(self.port), 30, what="moto server")

    def close(self) -> None:
        self.popen.kill()
        self.popen.wait()


class Proxy:
    """Forwards 127.0.0.1:port to the upstream port; ``down()`` refuses and cuts every connection."""

    def __init__(self, upstream: int):
        self.upstream, self.port = upstream, free_port()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                connection.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.down()


def pipe(source: socket.socket, sink: socket.socket, chunk_size: int = 65536,
         before_send: Callable[[], None] | None = None) -> None:
    """Copies ``source`` to ``sink`` until either end closes, then shuts both down (a proxy's half)."""
    try:
        while chunk := source.recv(chunk_size):
            if before_send is not None:
                before_send()
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def s3_client(endpoint: str, region: str = "us-east-1"):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
