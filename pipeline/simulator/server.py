"""The simulator's machinery: the WebSocket server, connections, streams, faults and the manifest.

A *stream* is one ``exchange:symbol:data_type`` feed (one exchange channel of one symbol). It is
global to the server, as on a real exchange: every connection subscribed to it gets the same
events, ids never repeat, and a connection that subscribes later starts with whatever the exchange
sends on subscription (a book snapshot, a last trade). A stream starts generating at its first
subscription and pauses while nobody is subscribed or the server is silent, so ``--count`` and the
manifest describe exactly what clients were sent.

Faults are counted on the stream's events (1, 2, 3, ...), so ``--gap-every 5`` skips events 5,
10, 15 of every stream. Everything random is drawn from generators seeded with
``seed:exchange:symbol:channel``, so two runs with the same ``--seed`` send the same ids and
faults whatever the timing (prices and times may differ where they follow the clock).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Iterable

from loguru import logger
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipeline.simulator.core import Channel, Exchange, Frame, Outcome, Rejected, StreamKey, dumps
from pipeline.simulator.market import Market, Samples, profile


@dataclasses.dataclass(frozen=True)
class Settings:
    exchange: str
    port: int
    host: str = "127.0.0.1"
    seed: int | None = None
    rate: float = 10.0
    count: int | None = None
    manifest: str | None = None
    gap_every: int = 0
    duplicate_every: int = 0
    reorder_every: int = 0
    malformed_every: int = 0
    drop_book_delta_every: int = 0
    corrupt_checksum_every: int = 0
    silence_after: float | None = None
    silence_for: float = 0.0
    disconnect_every: float | None = None
    reject_symbols: tuple[str, ...] = ()
    fault_symbols: tuple[str, ...] = ()  # faults only on these symbols' streams (empty: every stream)
    rate_limit_connections: int = 0
    ack_delay: float = 0.0
    book_dump: str | None = None
    book_dump_every: float = 1.0
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    idle_timeout: float | None = None  # None: the exchange's own; 0: never


class Manifest:
    """One JSON line per record sent (or deliberately skipped), written through at once."""

    def __init__(self, path: str | None, exchange: str) -> None:
        self.exchange = exchange
        self.file = open(path, "wb", buffering=0) if path else None

    def write(self, stream: "Stream", ids: Iterable[str | None], fault: str | None, sent: bool,
              event: int | None, snapshot: bool = False) -> None:
        if self.file is None:
            return
        self.file.write(b"".join(
            dumps({
                "exchange": self.exchange, "symbol": stream.symbol, "data_type": stream.channel.data_type,
                "exchange_sequence_id": i, "fault": fault, "sent": sent, "event": event,
                "snapshot": snapshot, "channel": stream.channel.name,
            }) + b"\n"
            for i in ids
        ))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _Connection(ServerConnection):
    """Remembers when the client last sent any frame, control frames included (idle timeouts)."""

    last_received = 0.0
    route: tuple[list, dict] = ([], {})

    def process_event(self, event) -> None:  # type: ignore[no-untyped-def]
        self.last_received = time.monotonic()
        super().process_event(event)


class Conn:
    """One client connection: its subscriptions and per-exchange state."""

    def __init__(self, sim: "Simulator", ws: _Connection, number: int) -> None:
        self.sim, self.ws, self.number = sim, ws, number
        self.subs: dict[StreamKey, object] = {}
        self.state: dict[str, object] = {}
        self.opened = self.last_sent = time.monotonic()
        self.closed = False
        self.rng = random.Random(f"{sim.seed}:conn:{number}")

    async def send(self, data: bytes) -> bool:
        if self.closed or self.sim.silent():
            return False
        try:
            await self.ws.send(data, text=not self.sim.exchange.binary)
        except ConnectionClosed:
            self.closed = True
            return False
        self.last_sent = time.monotonic()
        return True

    async def close(self, code: int, reason: str) -> None:
        logger.info("closing connection {} ({})", self.number, reason)
        self.closed = True
        await self.ws.close(code, reason)


class Stream:
    """One ``exchange:symbol:channel`` feed: its events, faults and subscribers."""

    def __init__(self, sim: "Simulator", key: StreamKey, channel: Channel, market: Market) -> None:
        self.sim, self.symbol, self.channel, self.market = sim, key[0], channel, market
        self.rng = random.Random(f"{sim.seed}:{sim.exchange.name}:{key[0]}:{channel.name}")
        self.n = 0  # events generated
        self.subscribers: list[Conn] = []
        self.state: dict[str, object] = {}  # the exchange's counters (next ids, sequence)
        self.last: Frame | None = None  # the last event frame generated
        self.last_id: str | None = None  # the id of the last event applied to the true book
        self.held: list[tuple[int, Frame]] = []  # reordered events waiting for the next one
        self.wake = asyncio.Event()
        if channel.data_type == "orderbook":
            market.live = True
        sim.exchange.start(self)
        self.task = asyncio.ensure_future(self.run())

    @property
    def done(self) -> bool:
        return self.sim.settings.count is not None and self.n >= self.sim.settings.count

    def generate(self) -> list:
        if self.channel.data_type == "trade":
            k = 1
            if self.channel.max_trades > 1:
                k = min(1 + int(self.rng.expovariate(1.5)), self.channel.max_trades)
            return [self.market.trade(self.rng) for _ in range(k)]
        return self.market.step(self.rng)

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug in one stream must be seen, not end the server
            logger.exception("stream {}:{} failed", self.symbol, self.channel.name)

    async def _run(self) -> None:
        sim, loop = self.sim, asyncio.get_running_loop()
        interval = 1.0 / sim.settings.rate
        due_at = loop.time()
        while not self.done:
            if sim.silent() or not self.subscribers:
                await self.wait_active()
                due_at = loop.time()
                continue
            delay = due_at - loop.time()
            if delay > 0:  # at high rates, wake every 2 ms and send what is due in one go
                await asyncio.sleep(max(delay, 0.002))
                continue
            due = min(int(-delay * sim.settings.rate) + 1, 1000)
            for _ in range(due):
                if self.done or not self.subscribers or sim.silent():
                    break
                await self.emit()
            due_at += due * interval
        await self.flush_held()

    async def wait_active(self) -> None:
        while True:
            left = self.sim.silence_left()
            if left > 0:
                await asyncio.sleep(left)
            elif not self.subscribers:
                self.wake.clear()
                await self.wake.wait()
            else:
                return

    async def emit(self) -> None:
        """Generates the next event and sends it, faults included."""
        self.n += 1
        n, faults = self.n, self.sim.faults
        update = self.generate()
        fault = faults.fault_for(self.channel, n) if faults.applies(self.symbol) else None
        frame = self.sim.exchange.render(self, update, fault == "corrupt_checksum")
        self.last, self.last_id = frame, frame.ids[-1] if frame.ids else self.last_id
        if fault in ("gap", "drop_book_delta"):
            self.sim.manifest.write(self, frame.ids, fault, False, n)
            logger.debug("{} {}:{} event {} not sent ({})", self.sim.exchange.name, self.symbol, self.channel.name, n, fault)
        elif fault == "reorder":
            self.held.append((n, frame))
        else:
            await self.deliver(frame, fault if fault == "corrupt_checksum" else None, n)
            if fault == "duplicate":
                await self.deliver(frame, "duplicate", n)
            await self.flush_held()
        if faults.applies(self.symbol) and faults.malformed(n):
            await self.deliver_malformed(frame, n)

    async def flush_held(self) -> None:
        while self.held:
            n, frame = self.held.pop(0)
            await self.deliver(frame, "reorder", n)

    async def deliver(self, frame: Frame, fault: str | None, event: int | None,
                      conns: list[Conn] | None = None, snapshot: bool = False) -> None:
        exchange, sent = self.sim.exchange, 0
        for conn in list(self.subscribers) if conns is None else conns:
            if await conn.send(exchange.envelope(conn, self, frame.data)):
                sent += 1
        self.sim.manifest.write(self, frame.ids, fault, sent > 0, event, snapshot)

    async def deliver_malformed(self, frame: Frame, event: int) -> None:
        exchange, sent = self.sim.exchange, 0
        for conn in list(self.subscribers):
            if await conn.send(exchange.malformed(exchange.envelope(conn, self, frame.data))):
                sent += 1
        self.sim.manifest.write(self, [None], "malformed", sent > 0, event)


class Faults:
    def __init__(self, settings: Settings) -> None:
        self.s = settings

    @staticmethod
    def _hit(every: int, n: int) -> bool:
        return every > 0 and n % every == 0

    def applies(self, symbol: str) -> bool:
        return not self.s.fault_symbols or symbol.upper() in {f.upper() for f in self.s.fault_symbols}

    def fault_for(self, channel: Channel, n: int) -> str | None:
        """The one fault of event ``n``; when several options hit the same event, the first wins."""
        s, hit = self.s, self._hit
        if hit(s.gap_every, n):
            return "gap"
        if channel.delta and hit(s.drop_book_delta_every, n):
            return "drop_book_delta"
        if hit(s.reorder_every, n):
            return "reorder"
        if hit(s.duplicate_every, n):
            return "duplicate"
        if channel.checksum and hit(s.corrupt_checksum_every, n):
            return "corrupt_checksum"
        return None

    def malformed(self, n: int) -> bool:
        return self._hit(self.s.malformed_every, n)


class Simulator:
    def __init__(self, settings: Settings, exchange: Exchange) -> None:
        self.settings, self.exchange = settings, exchange
        self.seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**32)
        self.faults = Faults(settings)
        self.manifest = Manifest(settings.manifest, exchange.name)
        self.book_dump = open(settings.book_dump, "wb", buffering=0) if settings.book_dump else None
        self.streams: dict[StreamKey, Stream] = {}
        self.markets: dict[str, Market] = {}
        self.conns: set[Conn] = set()
        self.attempts = 0
        self.connections = 0
        self._samples: dict[str, Samples] | None = None
        idle = settings.idle_timeout if settings.idle_timeout is not None else exchange.idle_timeout
        self.idle_timeout = idle or None
        self.silence = (0.0, 0.0)  # (start, end), set when the first client connects
        self.first_connection: asyncio.Event | None = None

    # time
    def silent(self) -> bool:
        return self.silence[0] <= time.monotonic() < self.silence[1]

    def silence_left(self) -> float:
        return self.silence[1] - time.monotonic() if self.silent() else 0.0

    # streams and markets
    def market(self, symbol: str) -> Market:
        if symbol not in self.markets:
            if self._samples is None:
                try:
                    self._samples = self.exchange.samples()
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    logger.warning("fixtures not usable ({}: {}); using built-in samples", type(exc).__name__, exc)
                    self._samples = {}
            fixtures, defaults = self._samples, self.exchange.defaults()
            found = (fixtures.get(symbol) or defaults.get(symbol) or next(iter(fixtures.values()), None)
                     or next(iter(defaults.values())))
            rng = random.Random(f"{self.seed}:{self.exchange.name}:{symbol}:market")
            self.markets[symbol] = Market(profile(found), rng,
                                          self.exchange.depth, self.exchange.min_levels)
        return self.markets[symbol]

    def stream(self, key: StreamKey) -> Stream:
        if key not in self.streams:
            self.streams[key] = Stream(self, key, self.exchange.channels[key[1]], self.market(key[0]))
        return self.streams[key]

    # HTTP
    def process_request(self, connection: _Connection, request: Request) -> Response | None:
        self.attempts += 1
        if self.attempts <= self.settings.rate_limit_connections:
            logger.info("connection attempt {} refused with 429", self.attempts)
            response = connection.respond(429, "Too Many Requests\n")
            response.headers["Retry-After"] = "1"
            return response
        try:
            connection.route = self.exchange.route(request.path)
        except Rejected as exc:
            return connection.respond(exc.status, exc.text + "\n")
        return None

    # connections
    async def handler(self, ws: _Connection) -> None:
        self.connections += 1
        if self.first_connection is not None:
            self.first_connection.set()
        conn = Conn(self, ws, self.connections)
        subscriptions, conn.state = ws.route[0], dict(ws.route[1])
        self.conns.add(conn)
        logger.info("connection {} opened: {}", conn.number, ws.request.path if ws.request else "")
        if self.silent():
            ws.transport.pause_reading()
        timer = asyncio.ensure_future(self.timer(conn))
        try:
            if subscriptions:
                await self.apply(conn, Outcome(subscribe=list(subscriptions)))
            async for message in ws:
                try:
                    outcome = self.exchange.handle(conn, message)
                except Exception:  # noqa: BLE001 - a simulator bug must not look like a network fault
                    logger.exception("could not handle a client message")
                    continue
                await self.apply(conn, outcome)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            timer.cancel()
            for key in conn.subs:
                stream = self.streams.get(key)
                if stream and conn in stream.subscribers:
                    stream.subscribers.remove(conn)
            self.conns.discard(conn)
            logger.info("connection {} closed", conn.number)

    async def apply(self, conn: Conn, out: Outcome) -> None:
        for key in out.unsubscribe:
            conn.subs.pop(key, None)
            stream = self.streams.get(key)
            if stream and conn in stream.subscribers:
                stream.subscribers.remove(conn)
        for data in out.replies:
            await conn.send(data)
        if out.acks and self.settings.ack_delay > 0:
            asyncio.ensure_future(self.later(conn, out.acks, self.settings.ack_delay))
        else:
            for data in out.acks:
                await conn.send(data)
        for key, label in out.subscribe:
            stream = self.stream(key)
            conn.subs[key] = label
            # The snapshot is computed, the connection added and the first frame written with no
            # await in between, so the connection misses no event and sees none twice.
            frames = self.exchange.on_subscribe(stream, conn, label)
            if conn not in stream.subscribers:
                stream.subscribers.append(conn)
            stream.wake.set()
            for frame in frames:
                await stream.deliver(frame, None, None, [conn], snapshot=True)

    async def later(self, conn: Conn, frames: list[bytes], delay: float) -> None:
        await asyncio.sleep(delay)
        for data in frames:
            await conn.send(data)

    async def timer(self, conn: Conn) -> None:
        """Per connection: server pings, periodic messages, idle and lifetime limits."""
        s, ex = self.settings, self.exchange
        pings: list[tuple[float, asyncio.Future]] = []
        last_ping = last_periodic = time.monotonic()
        try:
            while not conn.closed:
                await asyncio.sleep(0.1)
                now, silent = time.monotonic(), self.silent()
                if s.disconnect_every and now - conn.opened >= s.disconnect_every:
                    await conn.close(1001, "simulated disconnect")
                    return
                if silent:
                    continue
                if self.idle_timeout and now - max(conn.ws.last_received, conn.last_sent, conn.opened) > self.idle_timeout:
                    await conn.close(1001, "idle timeout")
                    return
                if ex.server_pings and s.ping_interval > 0:
                    if now - last_ping >= s.ping_interval:
                        last_ping = now
                        pings.append((now, await conn.ws.ping()))
                    pings = [(t, f) for t, f in pings if not f.done()]
                    if pings and now - pings[0][0] > s.pong_timeout:
                        await conn.close(1008, "pong timeout")
                        return
                if ex.periodic_secs and now - last_periodic >= ex.periodic_secs:
                    last_periodic = now
                    for data in ex.periodic(conn):
                        await conn.send(data)
        except ConnectionClosed:
            conn.closed = True

    # background tasks
    async def silencer(self) -> None:
        """The silence window starts ``--silence-after`` seconds after the first client connected
        (not after start-up, which would make it depend on how fast clients come up)."""
        s = self.settings
        if s.silence_after is None or s.silence_for <= 0 or self.first_connection is None:
            return
        await self.first_connection.wait()
        start = time.monotonic() + s.silence_after
        self.silence = (start, start + s.silence_for)
        end = self.silence[1]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        logger.info("silence for {} s", self.settings.silence_for)
        for conn in list(self.conns):
            conn.ws.transport.pause_reading()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        logger.info("silence over")
        for conn in list(self.conns):
            if not conn.closed:
                conn.ws.transport.resume_reading()

    def dump_books(self) -> None:
        if self.book_dump is None:
            return
        stamp = time.time_ns() // 1000
        lines = []
        for stream in self.streams.values():
            if stream.channel.data_type != "orderbook":
                continue
            book = stream.market.book
            lines.append(dumps({
                "exchange": self.exchange.name, "symbol": stream.symbol, "timestamp": stamp,
                "bids": [self.exchange.level(stream, p, q) for p, q in book.top(True)],
                "asks": [self.exchange.level(stream, p, q) for p, q in book.top(False)],
                "seq": stream.last_id, "event": stream.n,
            }) + b"\n")
        self.book_dump.write(b"".join(lines))

    async def dumper(self) -> None:
        if self.book_dump is None:
            return
        while True:
            await asyncio.sleep(self.settings.book_dump_every)
            self.dump_books()

    async def run(self, stop: asyncio.Event, ready: "asyncio.Future[int] | None" = None) -> None:
        s = self.settings
        self.first_connection = asyncio.Event()
        server = await serve(
            self.handler, s.host, s.port,
            process_request=self.process_request,
            create_connection=_Connection,
            compression=None,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=2,
            max_size=2**20,
            max_queue=64,
            logger=_websockets_logger(),
        )
        port = server.sockets[0].getsockname()[1] if server.sockets else s.port
        logger.info("simulating {} on ws://{}:{} (seed {})", self.exchange.name, s.host, port, self.seed)
        if ready is not None:
            ready.set_result(port)
        tasks = [asyncio.ensure_future(self.silencer()), asyncio.ensure_future(self.dumper())]
        try:
            await stop.wait()
        finally:
            logger.info("stopping")
            for task in tasks + [stream.task for stream in self.streams.values()]:
                task.cancel()
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 3)
            except asyncio.TimeoutError:
                logger.warning("connections did not close in time")
            self.dump_books()
            if self.book_dump is not None:
                self.book_dump.close()
            self.manifest.close()


def _websockets_logger() -> logging.Logger:
    """websockets' own log, warnings and errors only, into loguru (a client going away is not one)."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logger.opt(exception=record.exc_info).log(record.levelname, "websockets: {}", record.getMessage())

    log = logging.getLogger("pipeline.simulator.websockets")
    log.setLevel(logging.WARNING)
    log.propagate = False
    if not log.handlers:
        log.addHandler(Forward())
    return log
