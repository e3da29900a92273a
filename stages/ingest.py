"""ingest: one exchange's WebSockets -> records -> ZeroMQ PUSH to check.

One thread per connection (an exchange allows only so many symbols per connection). Each thread
reads frames as fast as they come, stamps the receipt time once per frame, parses with the exchange
adapter, and pushes records in batches without ever blocking: a full queue downstream drops the
batch and counts it, and the socket keeps being read.
"""
from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
from typing import Sequence

import click
import websocket
from loguru import logger

from pipeline import config as cfg
from pipeline import exchanges, health, logs, metrics
from pipeline.resync import BookGuard
from pipeline.exchanges.base import Exchange, SymbolError
from pipeline.records import encode_events, encode_records, gap_event, now_us
from pipeline.resilience import Backoff, ParseBreaker
from pipeline.transport import Pusher
from pipeline.wsframes import BINARY, CLOSE, OVERSIZED, PING, TEXT, FrameReader

FLUSH_RECORDS = 512  # records per ZeroMQ message at most
FLUSH_BYTES = 512 * 1024  # raw JSON per message at most, so that ZMQ_HWM messages bound a queue's memory
FLUSH_SECS = 0.05  # a partial batch waits no longer than this
RECV_TIMEOUT_SECS = 0.1  # how often an idle connection looks at its deadlines and the stop flag
STALE_CHECK_SECS = 1.0


class RateLimited(Exception):
    def __init__(self, retry_after: float | None):
        super().__init__(f"rate limited (retry after {retry_after}s)")
        self.retry_after = retry_after


class Connection:
    """One WebSocket to the exchange carrying some symbols' feeds, reconnected forever."""

    def __init__(self, exchange: Exchange, url: str, symbols: Sequence[str], feeds: Sequence[str],
                 conf: cfg.Config, pusher: Pusher, index: int):
        self.exchange, self.url, self.symbols, self.feeds = exchange, url, list(symbols), list(feeds)
        self.conf, self.pusher, self.index = conf, pusher, index
        self.streams = [(s, exchange.feeds[f].data_type) for s in self.symbols for f in self.feeds]
        self.cadence = {exchange.feeds[f].data_type: conf.stream_stale_secs or exchange.feeds[f].cadence_secs
                        for f in self.feeds}
        self.up = False
        self.subscribed = False
        self.stale: list[str] = []
        self.last_seen: dict[tuple[str, str], float] = {}
        self.records = 0
        self._epoch_count = 0
        self._ws: websocket.WebSocket | None = None
        self._connected_gauge = metrics.WEBSOCKET_CONNECTED.labels(exchange=exchange.name, connection=str(index))
        self._reconnects = metrics.WEBSOCKET_RECONNECTS.labels(exchange=exchange.name)
        self._timeouts = metrics.MESSAGE_TIMEOUTS.labels(exchange=exchange.name)
        self._parse_errors = metrics.PARSE_ERRORS.labels(exchange=exchange.name)
        self._breaks = metrics.PARSE_CIRCUIT_BREAKS.labels(exchange=exchange.name)
        self._oversized = metrics.OVERSIZED_FRAMES.labels(exchange=exchange.name)

    # -- the reconnect loop
    def run(self, stop: threading.Event) -> None:
        backoff = Backoff(self.conf.ws_initial_retry_delay_secs, self.conf.ws_max_retry_delay_secs)
        down_since: int | None = None
        while not stop.is_set():
            delay = None
            try:
                self._ws = self._connect()
            except RateLimited as exc:
                delay = max(exc.retry_after or 0.0, backoff.next_delay())
                logger.warning("{} connection {}: {}; waiting {:.1f}s", self.exchange.name, self.index, exc, delay)
            except (OSError, websocket.WebSocketException) as exc:
                delay = backoff.next_delay()
                logger.warning("{} connection {} failed: {}; retrying in {:.1f}s", self.exchange.name, self.index, exc, delay)
            else:
                if down_since is not None:
                    self._push_outage(down_since, now_us())
                try:
                    delivered, delay = self._stream(stop)
                except Exception:  # noqa: BLE001 - a bug must cost a reconnect, not the connection's thread
                    logger.exception("{} connection {}: unexpected error; reconnecting", self.exchange.name, self.index)
                    delivered, delay = False, None
                down_since = now_us()
                if delivered:
                    backoff.reset()
                delay = max(delay or 0.0, backoff.next_delay())
            if stop.is_set() or stop.wait(delay):
                break
            self._reconnects.inc()

    def _connect(self) -> websocket.WebSocket:
        url = self.exchange.connection_url(self.url, self.symbols, self.feeds)
        try:
            ws = websocket.create_connection(
                url, timeout=self.conf.ws_message_timeout_secs, skip_utf8_validation=True, enable_multithread=False
            )
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (418, 429):
                headers = {k.lower(): v for k, v in (exc.resp_headers or {}).items()}
                retry_after = headers.get("retry-after")
                raise RateLimited(float(retry_after) if retry_after and retry_after.isdigit() else None) from None
            raise
        return ws

    def _push_outage(self, start: int, end: int) -> None:
        events = [gap_event("disconnect", self.exchange.name, s, d, start, end) for s, d in self.streams]
        self.pusher.send(encode_events(events), 0)

    # -- one connection's life
    def _stream(self, stop: threading.Event) -> tuple[bool, float | None]:
        """Reads one connection until it ends; (whether it delivered data, the delay an exchange asked for)."""
        ws = self._ws
        assert ws is not None
        self._epoch_count += 1
        epoch = f"{os.getpid()}.{self.index}.{self._epoch_count}"
        name = self.exchange.name
        parse = self.exchange.parse_safely
        max_frame = self.conf.max_frame_bytes
        timeout = self.conf.ws_message_timeout_secs
        breaker = ParseBreaker()
        books = BookGuard(self.exchange, self.conf.verify_book_checksum, self.conf.book_resync_min_interval_secs, timeout)
        headers: list[tuple] = []  # rows in ``Header`` field order
        numbers: dict[tuple[str, str], int] = {}  # the last ``Header.number`` of each stream on this epoch
        datas: list[bytes] = []
        batch_bytes = 0
        delivered = False
        retry_after: float | None = None
        ws.settimeout(RECV_TIMEOUT_SECS)
        self.up = True
        self._connected_gauge.set(1)
        logger.info("{} connection {} up: {} symbols", name, self.index, len(self.symbols))
        try:
            self._subscribe(ws)
            now = time.monotonic()
            last_frame = last_sent = last_flush = last_stale_check = now
            connected_at = now
            reader = FrameReader(ws.sock, max_frame)
            while not stop.is_set():
                message = reader.next()
                now = time.monotonic()
                if message is not None:
                    opcode, frame = message
                    last_frame = now
                    if opcode == TEXT or opcode == BINARY:
                        received = now_us()
                        parsed = parse(frame)
                        if parsed.records:
                            delivered = True
                            for r in parsed.records:
                                stream = (r.symbol, r.data_type)
                                number = numbers.get(stream, 0) + 1
                                numbers[stream] = number
                                size = len(r.data)
                                headers.append((name, r.symbol, r.data_type, r.exchange_sequence_id, received,
                                                r.timestamp_exchange, r.seq, r.prev, r.snapshot, epoch, size, number))
                                datas.append(r.data)
                                batch_bytes += size
                            if books.active:
                                for message_out in books.observe(parsed.records, received, now):
                                    ws.send(message_out)
                        elif parsed.error is not None:
                            self._parse_errors.inc()
                            logger.debug("{}: unparsable frame ({}): {!r:.200}", name, parsed.error, frame)
                        else:
                            retry_after = self._on_control(parsed)
                            if parsed.control == "rate_limit":
                                break
                        if breaker.record(parsed.error is None, now):
                            self._breaks.inc()
                            logger.error("{} connection {}: most frames of the last minute failed to parse; reconnecting", name, self.index)
                            break
                    elif opcode == PING:
                        ws.pong(frame)
                    elif opcode == OVERSIZED:
                        self._oversized.inc()
                        logger.warning("{}: refused a frame over MAX_FRAME_BYTES ({})", name, max_frame)
                    elif opcode == CLOSE:
                        logger.info("{} connection {} closed by the exchange", name, self.index)
                        break
                if headers and (len(headers) >= FLUSH_RECORDS or batch_bytes >= FLUSH_BYTES or now - last_flush >= FLUSH_SECS):
                    self._flush(headers, datas, now)
                    headers, datas, batch_bytes = [], [], 0
                    last_flush = now
                elif not headers:
                    last_flush = now
                if now - last_frame > timeout:
                    self._timeouts.inc()
                    logger.warning("{} connection {}: no frame for {:.0f}s; reconnecting", name, self.index, timeout)
                    break
                if books.active:
                    for event in books.expired(now):
                        if event == "reconnect":
                            logger.warning("{} connection {}: a book resync brought no snapshot; reconnecting", name, self.index)
                            raise ConnectionResetError("book resync timed out")
                    resyncs = books.take_events()
                    if resyncs:
                        self.pusher.send(encode_events(resyncs), 0)
                keepalive = self.exchange.keepalive_secs
                if keepalive and now - last_sent >= keepalive and self.exchange.keepalive_message:
                    ws.send(self.exchange.keepalive_message)
                    last_sent = now
                if now - last_stale_check >= STALE_CHECK_SECS:
                    self._check_stale(now, connected_at)
                    last_stale_check = now
        except (OSError, websocket.WebSocketException) as exc:  # ConnectionError included
            logger.warning("{} connection {} lost: {}", name, self.index, exc or type(exc).__name__)
        finally:
            if headers:
                self._flush(headers, datas, time.monotonic())
            self.up = self.subscribed = False
            self._connected_gauge.set(0)
            self.stale = []
            try:
                ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass
        return delivered, retry_after

    def _subscribe(self, ws: websocket.WebSocket) -> None:
        messages = self.exchange.subscribe_messages(self.symbols, self.feeds)
        for i, message in enumerate(messages):
            if i and self.exchange.subscribe_interval_secs:
                time.sleep(self.exchange.subscribe_interval_secs)
            ws.send(message)
        self.subscribed = True

    def _flush(self, headers: list[tuple], datas: list[bytes], now: float) -> None:
        self.pusher.send(encode_records(headers, datas), len(headers))
        self.records += len(headers)
        counts = collections.Counter((h[1], h[2]) for h in headers)
        wall = int(time.time())
        for (symbol, data_type), count in counts.items():
            self.last_seen[(symbol, data_type)] = now
            metrics.MESSAGES_RECEIVED.labels(stage="ingest", exchange=self.exchange.name, symbol=symbol, data_type=data_type).inc(count)
            metrics.LAST_MESSAGE_TIMESTAMP.labels(exchange=self.exchange.name, symbol=symbol, data_type=data_type).set(wall)

    def _on_control(self, parsed) -> float | None:
        kind, name = parsed.control, self.exchange.name
        metrics.CONTROL_MESSAGES.labels(exchange=name, kind=kind).inc()
        if kind in ("error", "subscribe_error"):
            logger.warning("{} says: {}", name, parsed.detail)
        elif kind == "rate_limit":
            logger.warning("{} rate limit: {}; backing off", name, parsed.detail)
            return parsed.retry_after
        else:
            logger.debug("{} {}: {}", name, kind, parsed.detail)
        return None

    def _check_stale(self, now: float, connected_at: float) -> None:
        stale = []
        for symbol, data_type in self.streams:
            cadence = self.cadence[data_type]
            seen = self.last_seen.get((symbol, data_type), connected_at)
            is_stale = now - max(seen, connected_at) > cadence
            metrics.STREAM_STALE.labels(exchange=self.exchange.name, symbol=symbol, data_type=data_type).set(int(is_stale))
            if is_stale:
                stale.append(f"{self.exchange.name}:{symbol}:{data_type}")
        self.stale = stale


def _resolve(conf: cfg.Config) -> tuple[Exchange, list[str], list[str]]:
    """The exchange, symbols and feeds asked for, or a ConfigError naming the variable."""
    if conf.exchange not in exchanges.REGISTRY:
        raise cfg.ConfigError("EXCHANGE", f"unknown exchange {conf.exchange!r} (known: {', '.join(exchanges.REGISTRY)})")
    exchange = exchanges.get(conf.exchange)
    feeds = list(conf.feeds)
    if not feeds:
        raise cfg.ConfigError("FEEDS", "no feed given (orderbook, trades)")
    for feed in feeds:
        if feed not in exchange.feeds:
            raise cfg.ConfigError("FEEDS", f"unknown feed {feed!r} (known: {', '.join(exchange.feeds)})")
    if not conf.symbols:
        raise cfg.ConfigError("SYMBOLS", "no symbol given")
    try:
        symbols = list(dict.fromkeys(exchange.normalize_symbol(s) for s in conf.symbols))
    except SymbolError as exc:
        raise cfg.ConfigError("SYMBOLS", str(exc)) from None
    return exchange, symbols, feeds


@click.command()
@cfg.options(
    "EXCHANGE", "SYMBOLS", "FEEDS", "WS_URL", "ZMQ_PUSH", "ZMQ_HWM", "BATCH_INTERVAL", "WS_MESSAGE_TIMEOUT_SECS",
    "WS_INITIAL_RETRY_DELAY_SECS", "WS_MAX_RETRY_DELAY_SECS", "STREAM_STALE_SECS", "MAX_FRAME_BYTES", "BOOK_RESYNC_MIN_INTERVAL_SECS",
    "VERIFY_BOOK_CHECKSUM", "METRICS_PORT", "METRICS_HOST", "LOG_LEVEL", "LOG_DIR", "LOG_RETENTION_DAYS",
    "ZMQ_CURVE_SECRET_KEY_FILE", "ZMQ_CURVE_SERVER_KEY_FILE",
)
def command(**raw: str | None) -> None:
    """One ingest process: an exchange's WebSockets for some symbols -> check."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    conf = cfg.load(raw)
    exchange, symbols, feeds = _resolve(conf)
    push = conf.zmq_push or cfg.DEFAULT_INGEST_ENDPOINT
    logs.setup(f"ingest-{exchange.name}", conf.log_level, conf.log_dir, conf.log_retention_days)
    metrics.register(metrics.INGEST)
    state = health.Health(f"ingest-{exchange.name}")
    server = health.serve(state, conf.metrics_host, conf.metrics_port)


    per_connection = exchange.max_symbols_per_connection
    chunks = [symbols[i : i + per_connection] for i in range(0, len(symbols), per_connection)]
    connections = [
        Connection(exchange, conf.ws_url or exchange.url, chunk, feeds, conf, Pusher(push, conf.zmq_hwm, "ingest", settings=conf), i)
        for i, chunk in enumerate(chunks)
    ]
    state.connections_total = len(connections)
    state.dropped = lambda: sum(c.pusher.dropped_records for c in connections)
    state.last_drop = lambda: max((c.pusher.last_drop_monotonic or 0.0 for c in connections), default=0.0) or None
    state.stale_streams = lambda: [s for c in connections for s in c.stale]
    state.details = lambda: {"stream_age_seconds": {
        f"{exchange.name}:{symbol}:{data_type}": round(time.monotonic() - seen, 1)
        for c in connections for (symbol, data_type), seen in list(c.last_seen.items())}}
    threads = [threading.Thread(target=c.run, args=(stop,), name=f"ws-{c.index}", daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    logger.info("ingest {}: {} symbols over {} connection(s), feeds {}, pushing to {}",
                exchange.name, len(symbols), len(connections), ",".join(feeds), push)

    while not stop.wait(0.5):
        state.connections_up = sum(c.up for c in connections)
        state.ready = all(c.subscribed for c in connections)
        state.records_total = sum(c.records for c in connections)
        state.progressed()

    logger.info("ingest {}: stopping", exchange.name)
    deadline = time.monotonic() + 8.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for c in connections:
        c.pusher.close(linger_ms=int(max(0.0, deadline + 1.5 - time.monotonic()) * 1000))
    server.shutdown()
    logger.info("ingest {}: stopped", exchange.name)
