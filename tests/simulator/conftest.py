"""Helpers for the simulator tests: run ``collector simulate`` as a real process and talk to it."""
from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest
import websocket

from tests.conftest import REPO, free_port, wait_for


class Sim:
    """One ``collector simulate`` subprocess on a free loopback port."""

    def __init__(self, directory: Path, exchange: str, args: tuple[str, ...], dump_every: float | None = None) -> None:
        self.exchange, self.port = exchange, free_port()
        self.manifest_path = directory / f"{exchange}-{self.port}.manifest.jsonl"
        self.dump_path = directory / f"{exchange}-{self.port}.books.jsonl"
        self.output = directory / f"{exchange}-{self.port}.out"
        command = [
            sys.executable, "-m", "stages.cli", "simulate", "--exchange", exchange, "--port", str(self.port),
            "--manifest", str(self.manifest_path), "--log-dir", str(directory / "logs"), *args,
        ]
        if dump_every:
            command += ["--book-dump", str(self.dump_path), "--book-dump-every", str(dump_every)]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._listening, timeout=15, what=f"simulate {exchange} to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"simulator exited {self.proc.returncode}: {self.output.read_text()}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
            return True

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def connect(self, path: str, timeout: float = 5) -> websocket.WebSocket:
        return websocket.create_connection(self.url(path), timeout=timeout)

    def manifest(self, at_least: int = 0) -> list[dict]:
        """The manifest's lines, waiting (10 s at most) until it has ``at_least``: the simulator writes a
        line just after the frame's send, so a client may read the frame first."""
        def lines() -> list[dict]:
            if not self.manifest_path.exists():
                return []
            return [json.loads(line) for line in self.manifest_path.read_bytes().splitlines() if line.strip()]
        if at_least:
            wait_for(lambda: len(lines()) >= at_least, 10, what=f"{at_least} manifest lines")
        return lines()

    def book_dumps(self) -> list[dict]:
        if not self.dump_path.exists():
            return []
        return [json.loads(line) for line in self.dump_path.read_bytes().splitlines() if line.strip()]

    def stop(self, timeout: float = 5) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def simulate(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    sims: list[Sim] = []

    def start(exchange: str, *args: str, dump_every: float | None = None) -> Sim:
        sim = Sim(tmp_path, exchange, tuple(args), dump_every)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        if sim.proc.poll() is None:
            sim.proc.kill()
            sim.proc.wait()


def recv(ws: websocket.WebSocket) -> tuple[int, bytes]:
    """The next data or close frame as (opcode, payload); pings are answered by websocket-client."""
    return ws.recv_data()


def recv_json(ws: websocket.WebSocket) -> object:
    opcode, data = ws.recv_data()
    assert opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY), f"opcode {opcode}"
    return json.loads(data)


def recv_until(ws: websocket.WebSocket, done: Callable[[list], bool], timeout: float = 10) -> list:
    """Decoded frames (``None`` for one that is not JSON) until ``done(frames)``."""
    frames: list = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        assert time.monotonic() < deadline, f"timed out after {len(frames)} frames"
        opcode, data = ws.recv_data()
        assert opcode != websocket.ABNF.OPCODE_CLOSE, f"connection closed: {data!r}"
        try:
            frames.append(json.loads(data))
        except ValueError:
            frames.append(None)
    return frames


def close_code(data: bytes) -> int:
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005


def nothing_within(ws: websocket.WebSocket, seconds: float) -> bool:
    """True when no data frame arrives for ``seconds`` (a bounded negative check)."""
    ws.settimeout(seconds)
    try:
        ws.recv_data()
    except websocket.WebSocketTimeoutException:
        return True
    finally:
        ws.settimeout(5)
    return False


class TextBook:
    """A book as a client keeps it: price text -> size text per side, ordered by decimal value."""

    def __init__(self) -> None:
        self.sides: dict[bool, dict[str, str]] = {True: {}, False: {}}

    def clear(self) -> None:
        self.sides = {True: {}, False: {}}

    def set(self, bid: bool, price: str, size: str) -> None:
        if Decimal(size) == 0:
            self.sides[bid].pop(price, None)
        else:
            self.sides[bid][price] = size

    def top(self, bid: bool, n: int | None = None) -> list[list[str]]:
        levels = sorted(self.sides[bid].items(), key=lambda kv: Decimal(kv[0]), reverse=bid)
        return [[p, s] for p, s in levels[:n]]

    def crossed(self) -> bool:
        bids, asks = self.top(True, 1), self.top(False, 1)
        return bool(bids and asks and Decimal(bids[0][0]) >= Decimal(asks[0][0]))


def dump_at(sim: Sim, symbol: str, event: int, timeout: float = 10) -> dict:
    """The first true-book dump line of ``symbol`` written after its stream's event ``event``."""
    return wait_for(lambda: next((d for d in sim.book_dumps() if d["symbol"] == symbol and d["event"] >= event), None),
                    timeout=timeout, what=f"a book dump of {symbol} after event {event}")
