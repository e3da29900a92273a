"""A tiny WebSocket server of the test's own, speaking just enough of Binance's combined stream.

It acknowledges ``SUBSCRIBE`` requests and then runs the test's ``producer(conn)`` coroutine for
every connection, which sends whatever frames the scenario needs (``conn.send``) with the helpers
below; ``trade`` renders a Binance trade exactly as ``/stream`` sends it, with fields added, removed
or replaced at will. Runs in a thread with its own event loop, on 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Awaitable, Callable

import orjson
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import free_port


def trade(symbol: str, trade_id: object, drop: tuple[str, ...] = (), **fields: object) -> bytes:
    """A Binance ``<symbol>@trade`` frame; ``drop`` removes fields, keyword arguments add or replace them."""
    now = int(time.time() * 1000)
    data = {"e": "trade", "E": now, "s": symbol.upper(), "t": trade_id, "p": "61000.10", "q": "0.01", "T": now,
            "m": False, "M": True}
    data.update(fields)
    for name in drop:
        data.pop(name, None)
    message = {"stream": f"{symbol}@trade", "data": data}
    try:
        return orjson.dumps(message)
    except TypeError:  # integers past 64 bits: the standard library writes them
        return json.dumps(message, separators=(",", ":")).encode()


class Conn:
    def __init__(self, ws: ServerConnection, number: int):
        self.ws, self.number = ws, number
        self.subscribed: list[str] = []
        self.subscribed_event = asyncio.Event()

    async def send(self, frame: bytes | str, text: bool = True) -> None:
        await self.ws.send(frame, text=text)


class FakeBinance:
    def __init__(self, producer: Callable[[Conn], Awaitable[None]], expect_streams: int = 1,
                 ack_delay: float = 0.0):
        self.producer, self.expect_streams, self.ack_delay = producer, expect_streams, ack_delay
        self.port = free_port()
        self.connections = 0
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake exchange did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port, max_size=2**20, ping_interval=None, compression=None):
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        conn = Conn(ws, self.connections)
        reader = asyncio.ensure_future(self._read(conn))
        try:
            try:
                await asyncio.wait_for(conn.subscribed_event.wait(), 10)
            except asyncio.TimeoutError:
                pass
            await self.producer(conn)
            await ws.wait_closed()
        except Exception as exc:  # noqa: BLE001 - a closed connection ends the producer; keep the reason
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            reader.cancel()

    async def _read(self, conn: Conn) -> None:
        async for message in conn.ws:
            request = orjson.loads(message)
            if request.get("method") == "SUBSCRIBE":
                if self.ack_delay:
                    await asyncio.sleep(self.ack_delay)
                await conn.send(orjson.dumps({"result": None, "id": request.get("id")}))
                conn.subscribed += [p.split("@")[0] for p in request.get("params", [])]
                if len(conn.subscribed) >= self.expect_streams:
                    conn.subscribed_event.set()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
