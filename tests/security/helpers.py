"""Shared by the security tests: key pairs made by ``collector keygen``, a test pusher that speaks
CURVE (or not) over real ZeroMQ, and a search for a secret in everything a stage shows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import zmq
import zmq.auth

from pipeline.records import encode_records
from tests.conftest import REPO


def cli(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def keygen(folder: Path, name: str) -> tuple[Path, Path]:
    """(public, secret) key files of a new pair, made by the real ``collector keygen``."""
    result = cli("keygen", "--output", str(folder), "--name", name)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / f"{name}.key", folder / f"{name}.key_secret"


class TestPusher:
    """A PUSH socket like ingest's: CURVE client when given key files, plain otherwise."""

    __test__ = False  # not a test class

    def __init__(self, endpoint: str, secret_file: Path | None = None, server_file: Path | None = None):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.linger = 0
        self.socket.sndhwm = 10_000
        if secret_file is not None:
            public, secret = zmq.auth.load_certificate(secret_file)
            self.socket.curve_secretkey, self.socket.curve_publickey = secret, public
            self.socket.curve_serverkey = zmq.auth.load_certificate(server_file)[0]
        self.monitor = self.socket.get_monitor_socket()
        self.socket.connect(endpoint)
        self.events: list[int] = []

    def send(self, records: list[tuple[tuple, bytes]], batch: int = 50, timeout_ms: int = 5000) -> int:
        """Queues the records, waiting at most ``timeout_ms`` for room; how many the socket took, not how
        many arrived. (Once a peer refused the handshake, libzmq drops the connection's queue and takes
        nothing more.)"""
        self.socket.sndtimeo = timeout_ms
        taken = 0
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            try:
                self.socket.send_multipart(encode_records([h for h, _ in chunk], [d for _, d in chunk]))
            except zmq.Again:
                break
            taken += len(chunk)
        return taken

    def handshake_events(self) -> list[int]:
        """The ZeroMQ socket events seen so far (zmq.EVENT_*)."""
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            self.events.append(recv_monitor_message(self.monitor)["event"])
        return self.events

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.term()


def places_with(marker: str, texts: dict[str, str]) -> list[str]:
    """The names of the texts that contain the marker."""
    return [name for name, text in texts.items() if marker in text]


def log_files(log_dir: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in sorted(log_dir.rglob("*")) if p.is_file()}
