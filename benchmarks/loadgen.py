"""A load generator that speaks just enough of Binance's combined-stream WebSocket API to feed
``collector ingest --exchange binance`` as fast as the client reads, at almost no CPU cost.

    python -m benchmarks.loadgen [--port 0] [--rate FRAMES_PER_S] [--stats FILE]

It prints ``PORT <n>`` on stdout once it listens on 127.0.0.1, serves ``ws://127.0.0.1:<n>/stream``,
answers ``{"method":"SUBSCRIBE","params":[...],"id":N}`` with ``{"result":null,"id":N}`` and then
streams every subscribed stream, wrapped as ``{"stream":"<name>","data":{...}}``:

* ``<symbol>@trade``: the recorded Binance trades (``binance/trade.jsonl`` of the shared fixtures),
  cycled, with contiguous trade ids (``t``) and ``E``/``T`` set to the send time (ms);
* ``<symbol>@depth20@100ms``: 20-level top-of-book snapshots (~1.4 KB) built like the real format,
  with contiguous ``lastUpdateId``.

Why it costs almost nothing: the WebSocket handshake and framing are done by hand on a plain socket,
frames are unmasked server frames pre-encoded from templates (fixed-width ids, so every frame's
length and header are known in advance), and a whole cycle of frames (100-300 KB) is rendered with
one ``bytes % tuple`` and written with one ``sendall``. Ids continue across reconnects.

``--rate 0`` (the default) writes as fast as the client reads (TCP back-pressure paces it); a positive
rate paces frames in small bursts (every ~2 ms) and reports how far it fell behind. On SIGTERM it
writes its counters as JSON to ``--stats``.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
E_MARK, T_MARK = b"@@@@@@@@@@@@E", b"@@@@@@@@@@@@T"  # 13 bytes: a ms timestamp, filled per burst
TRADE_ID_START = 3_735_683_259  # the fixture's first id; 10 digits for the next 6e9 trades
BOOK_ID_START = 40_000_000_000  # 11 digits
BOOK_LEVELS = 20


def fixtures_dir() -> Path:
    return Path(os.environ.get("COLLECTOR_FIXTURES") or REPO.parent / "shared" / "fixtures")


def fixture_lines(relative: str) -> list[bytes]:
    """The frames of one fixture file (empty when it is missing)."""
    path = fixtures_dir() / relative
    if not path.exists():
        return []
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def ws_header(length: int, opcode: int = 0x1) -> bytes:
    """The header of an unmasked, final server frame carrying ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack(">BBH", first, 126, length)
    return struct.pack(">BBQ", first, 127, length)


# -- payload templates: one ``%d`` for the id; E_MARK/T_MARK for times ---------------------------------

_FALLBACK_TRADES = [
    {"e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": 1, "p": "61837.63000000", "q": "0.02000000",
     "T": 1723161255342, "m": True, "M": True},
    {"e": "trade", "E": 1723161255619, "s": "BTCUSDT", "t": 2, "p": "61837.64000000", "q": "0.04800000",
     "T": 1723161255618, "m": False, "M": True},
]


def trade_payloads(symbol: str) -> list[bytes]:
    """``<symbol>@trade`` payload templates from the recorded trades (field order as Binance sends)."""
    trades = []
    for line in fixture_lines("binance/trade.jsonl"):
        data = json.loads(line).get("data")
        if isinstance(data, dict) and data.get("e") == "trade":
            trades.append(data)
    trades = trades or _FALLBACK_TRADES
    out = []
    for t in trades:
        body = (
            f'{{"stream":"{symbol}@trade","data":{{"e":"trade","E":@E@,"s":"{symbol.upper()}","t":@ID@,'
            f'"p":"{t["p"]}","q":"{t["q"]}","T":@T@,"m":{"true" if t["m"] else "false"},'
            f'"M":{"true" if t.get("M", True) else "false"}}}}}'
        ).encode()
        out.append(_placeholders(body))
    return out


def book_payloads(symbol: str, count: int = 200, seed: int = 7) -> list[bytes]:
    """``<symbol>@depth20@100ms`` payload templates: 20 bid and 20 ask levels, a random walk of the mid."""
    rng = random.Random(seed)
    mid = 6_183_763  # cents: 61837.63, the recorded trades' price
    out = []
    for _ in range(count):
        mid += rng.randint(-3, 3)
        bids, asks = [], []
        price = mid
        for _level in range(BOOK_LEVELS):
            price -= rng.randint(1, 4)
            bids.append(f'["{price // 100}.{price % 100:02d}000000","{rng.randint(1, 250_000_000) / 1e8:.8f}"]')
        price = mid + 1
        for _level in range(BOOK_LEVELS):
            price += rng.randint(1, 4)
            asks.append(f'["{price // 100}.{price % 100:02d}000000","{rng.randint(1, 250_000_000) / 1e8:.8f}"]')
        body = (f'{{"stream":"{symbol}@depth20@100ms","data":{{"lastUpdateId":@ID@,'
                f'"bids":[{",".join(bids)}],"asks":[{",".join(asks)}]}}}}').encode()
        out.append(_placeholders(body))
    return out


def _placeholders(body: bytes) -> bytes:
    return body.replace(b"%", b"%%").replace(b"@ID@", b"%d").replace(b"@E@", E_MARK).replace(b"@T@", T_MARK)


class Stream:
    """One subscribed stream: its frame templates and its next id (kept across connections)."""

    def __init__(self, name: str):
        self.name = name
        symbol, _, channel = name.partition("@")
        if channel == "trade":
            payloads, self.next_id, self.id_width = trade_payloads(symbol), TRADE_ID_START, 10
        elif channel.startswith("depth"):
            payloads, self.next_id, self.id_width = book_payloads(symbol), BOOK_ID_START, 11
        else:
            raise ValueError(f"the load generator does not serve {name!r}")
        self.has_time = E_MARK in payloads[0]
        # every frame has a fixed length once the id is rendered with its fixed width
        self.frames = [ws_header(len(p) - 2 + self.id_width) + p for p in payloads]
        self.cycle = b"".join(self.frames)
        self.cycle_len = len(self.frames)
        self.position = 0
        self.sent = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def render(self, count: int, now_ms: int) -> bytes:
        """The next ``count`` frames, ready to write."""
        with self.lock:
            first, position = self.next_id, self.position
            self.next_id += count
            self.position = (position + count) % self.cycle_len
        if position == 0 and count == self.cycle_len:
            chunk = self.cycle % tuple(range(first, first + count))
        else:
            frames = self.frames
            n = self.cycle_len
            chunk = b"".join([frames[(position + i) % n] for i in range(count)]) % tuple(range(first, first + count))
        if self.has_time:
            chunk = chunk.replace(E_MARK, b"%013d" % now_ms).replace(T_MARK, b"%013d" % (now_ms - 1))
        self.sent += count
        self.bytes += len(chunk)
        return chunk


def split_frames(chunk: bytes) -> list[bytes]:
    """The payloads of a run of unmasked server frames (what a client's recv returns)."""
    out, pos = [], 0
    while pos < len(chunk):
        length, head = chunk[pos + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(chunk[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(chunk[pos + 2:pos + 10], "big"), 10
        out.append(chunk[pos + head:pos + head + length])
        pos += head + length
    return out


def payloads(name: str, count: int, first_id: int | None = None, now_ms: int | None = None) -> list[bytes]:
    """``count`` frames of a stream as the client receives them (ids contiguous from ``first_id``)."""
    stream = Stream(name)
    if first_id is not None:
        stream.next_id = first_id
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    out: list[bytes] = []
    while len(out) < count:
        out += split_frames(stream.render(min(stream.cycle_len, count - len(out)), now_ms))
    return out


class Generator:
    def __init__(self, rate: float):
        self.rate = rate
        self.streams: dict[str, Stream] = {}
        self.connections = 0
        self.first_frame: float | None = None
        self.last_frame: float | None = None
        self.max_lag_frames = 0
        self.lock = threading.Lock()

    def stream(self, name: str) -> Stream:
        with self.lock:
            if name not in self.streams:
                self.streams[name] = Stream(name)
            return self.streams[name]

    def stats(self) -> dict:
        span = (self.last_frame or 0) - (self.first_frame or 0)
        sent = sum(s.sent for s in self.streams.values())
        return {
            "rate_target": self.rate,
            "connections": self.connections,
            "frames": sent,
            "bytes": sum(s.bytes for s in self.streams.values()),
            "seconds": span,
            "rate_achieved": sent / span if span > 0 else 0.0,
            "max_lag_frames": self.max_lag_frames,
            "streams": {name: {"frames": s.sent, "first_id": s.next_id - s.sent if s.sent else s.next_id,
                               "next_id": s.next_id} for name, s in self.streams.items()},
        }

    # -- one connection
    def serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        try:
            if not self._handshake(conn, reader):
                return
            with self.lock:
                self.connections += 1
            write_lock = threading.Lock()
            subscribed: list[Stream] = []
            ready = threading.Event()
            threading.Thread(target=self._read_client, args=(conn, reader, write_lock, subscribed, ready),
                             daemon=True).start()
            ready.wait()
            if subscribed:
                self._write(conn, write_lock, subscribed)
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _handshake(self, conn: socket.socket, reader) -> bool:
        request = reader.readline(8192)
        headers = {}
        while True:
            line = reader.readline(8192)
            if not line or line in (b"\r\n", b"\n"):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        parts = request.split()
        if len(parts) < 2 or not parts[1].startswith(b"/stream") or "sec-websocket-key" not in headers:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        return True

    def _read_client(self, conn, reader, write_lock, subscribed: list, ready: threading.Event) -> None:
        """Reads the client's frames: SUBSCRIBE (answered), ping (pong), close; ignores the rest."""
        try:
            while True:
                opcode, payload = read_frame(reader)
                if opcode == 0x8:  # close
                    with write_lock:
                        conn.sendall(ws_header(2, 0x8) + b"\x03\xe8")
                    return
                if opcode == 0x9:  # ping
                    with write_lock:
                        conn.sendall(ws_header(len(payload), 0xA) + payload)
                    continue
                if opcode != 0x1:
                    continue
                try:
                    message = json.loads(payload)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                reply = json.dumps({"result": None, "id": message.get("id")}, separators=(",", ":")).encode()
                if message.get("method") == "SUBSCRIBE":
                    for name in message.get("params") or []:
                        try:
                            stream = self.stream(name)
                        except ValueError:
                            reply = json.dumps({"code": 2, "msg": f"Invalid request: unknown stream {name}",
                                                "id": message.get("id")}).encode()
                            continue
                        if stream not in subscribed:
                            subscribed.append(stream)
                with write_lock:
                    conn.sendall(ws_header(len(reply)) + reply)
                if subscribed:
                    ready.set()
        except (OSError, ValueError, EOFError):
            pass
        finally:
            ready.set()

    def _write(self, conn: socket.socket, write_lock: threading.Lock, streams: list[Stream]) -> None:
        rate = self.rate
        started = time.monotonic()
        if self.first_frame is None:
            self.first_frame = time.time()
        written = 0
        turn = 0
        while True:
            stream = streams[turn % len(streams)]
            turn += 1
            if rate <= 0:
                count = stream.cycle_len
            else:
                due = int((time.monotonic() - started) * rate) - written
                if due <= 0:
                    time.sleep(0.002)
                    continue
                self.max_lag_frames = max(self.max_lag_frames, due)
                count = min(due, stream.cycle_len)
            chunk = stream.render(count, time.time_ns() // 1_000_000)
            with write_lock:
                conn.sendall(chunk)
            written += count
            self.last_frame = time.time()


def read_frame(reader) -> tuple[int, bytes]:
    """One client frame (masked, as clients must send them): (opcode, payload)."""
    head = reader.read(2)
    if len(head) < 2:
        raise EOFError
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", reader.read(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", reader.read(8))[0]
    mask = reader.read(4) if head[1] & 0x80 else b""
    payload = reader.read(length)
    if len(payload) < length:
        raise EOFError
    if mask:
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return opcode, payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--rate", type=float, default=0.0, help="frames/s per connection (0: as fast as the client reads)")
    parser.add_argument("--stats", default="", help="file to write the counters to (JSON) on SIGTERM")
    args = parser.parse_args(argv)

    generator = Generator(args.rate)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"PORT {server.getsockname()[1]}", flush=True)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        conn.settimeout(None)
        threading.Thread(target=generator.serve, args=(conn,), daemon=True).start()
    server.close()
    if args.stats:
        Path(args.stats).write_text(json.dumps(generator.stats()))
    sys.stdout.flush()
    os._exit(0)  # connection threads may sit in sendall on a client that stopped reading


if __name__ == "__main__":
    main()
