"""check: PULL from every ingest -> sequence and latency checks -> PUSH to persist.

Reads only the header frame of each message; the records' raw JSON is forwarded untouched. Gaps
confirmed by the tracker become rows of the ``gaps`` table, sent to persist beside the records.
"""
from __future__ import annotations

import collections
import signal
import threading
import time

import click
from loguru import logger

from pipeline import config as cfg
from pipeline import exchanges, health, logs, metrics
from pipeline.exchanges.base import Semantics
from pipeline.records import EVENTS, RECORDS, WireError, decode_events, decode_headers, encode_events, gap_event
from pipeline.sequence import DUPLICATE, OUT_OF_ORDER, SequenceTracker
from pipeline.transport import Puller, Pusher

CONFIRM_EVERY_SECS = 0.5
ANOMALY_ROWS_EVERY_SECS = 10.0
DRAIN_SECS = 3.0


def feed_semantics(exchange: str, data_type: str) -> Semantics:
    adapter = exchanges.REGISTRY.get(exchange)
    if adapter is not None:
        for feed in adapter.feeds.values():
            if feed.data_type == data_type:
                return feed.semantics
    return Semantics.NONE


class Checker:
    """Turns header rows into verdicts and metrics; the loop below only moves messages."""

    def __init__(self, tracker: SequenceTracker):
        self.tracker = tracker
        self.records = 0
        self.gaps = 0
        self.duplicates = 0
        self._streams: set[tuple[str, str, str]] = set()
        # duplicates and out-of-order records per stream since the last rows sent: [count, first, last]
        self._anomalies: dict[tuple[str, str, str, str], list[int]] = {}

    def check(self, rows: list[list], now: float) -> None:
        """Verdicts, latency and counts for one message's header rows."""
        latencies: dict[tuple[str, str], list[float]] = {}
        received: collections.Counter = collections.Counter()
        negative = 0
        for exchange, symbol, data_type, _, collected, exchange_time, *_ in rows:
            received[(exchange, symbol, data_type)] += 1
            if exchange_time is not None:
                delay_ms = (collected - exchange_time) / 1000.0
                if delay_ms >= 0:
                    values = latencies.get((exchange, data_type))
                    if values is None:
                        values = latencies[(exchange, data_type)] = []
                    values.append(delay_ms)
                else:
                    negative += 1
                    metrics.NEGATIVE_LATENCY.labels(exchange=exchange).inc()
        for labels, values in latencies.items():
            metrics.LATENCY.observe_many(labels, values)
        verdicts: collections.Counter = collections.Counter()
        for verdict, key, collected in self.tracker.observe_rows(rows, now):
            verdicts[(verdict,) + key] += 1
            seen = self._anomalies.get((verdict,) + key)
            if seen is None:
                self._anomalies[(verdict,) + key] = [1, collected, collected]
            else:
                seen[0] += 1
                seen[2] = collected
        self.records += len(rows)
        for stream in received.keys() - self._streams:
            self._streams.add(stream)
            labels = dict(zip(("exchange", "symbol", "data_type"), stream))
            for counter in (metrics.SEQUENCE_GAPS, metrics.SEQUENCE_DUPLICATES, metrics.SEQUENCE_OUT_OF_ORDER):
                counter.labels(**labels)  # exported at 0 from the start, so the first increase is visible
        for (exchange, symbol, data_type), count in received.items():
            metrics.MESSAGES_RECEIVED.labels(stage="check", exchange=exchange, symbol=symbol, data_type=data_type).inc(count)
        for (verdict, exchange, symbol, data_type), count in verdicts.items():
            if verdict == DUPLICATE:
                self.duplicates += count
            counter = metrics.SEQUENCE_DUPLICATES if verdict == DUPLICATE else metrics.SEQUENCE_OUT_OF_ORDER
            counter.labels(exchange=exchange, symbol=symbol, data_type=data_type).inc(count)

    def anomaly_rows(self) -> list[dict]:
        """Duplicates and out-of-order records since the last call, one gap-log row per stream and kind
        (``missing`` = how many), so that the archive tells what check saw."""
        rows = [gap_event(verdict, exchange, symbol, data_type, first, last, missing=count)
                for (verdict, exchange, symbol, data_type), (count, first, last) in self._anomalies.items()]
        self._anomalies = {}
        return rows

    def count_gaps(self, gaps: list[dict]) -> None:
        self.gaps += len(gaps)
        for gap in gaps:
            labels = dict(exchange=gap["exchange"], symbol=gap["symbol"], data_type=gap["data_type"])
            metrics.SEQUENCE_GAPS.labels(**labels).inc()
            if gap["missing"] is not None:
                metrics.SEQUENCE_GAP_SIZE.labels(**labels).observe(gap["missing"])
            logger.warning("gap in {exchange}:{symbol}:{data_type}: expected {expected}, received {received}, "
                           "missing {missing}", **gap)


@click.command()
@cfg.options("ZMQ_PULL", "ZMQ_PUSH", "ZMQ_HWM", "SEQUENCE_MAX_STREAMS", "METRICS_PORT", "METRICS_HOST",
             "LOG_LEVEL", "LOG_DIR", "LOG_RETENTION_DAYS",
             "ZMQ_CURVE_SECRET_KEY_FILE", "ZMQ_CURVE_AUTHORIZED_KEYS")
def command(**raw: str | None) -> None:
    """The checking stage: sequence gaps, duplicates, reordering and latency."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    conf = cfg.load(raw)
    logs.setup("check", conf.log_level, conf.log_dir, conf.log_retention_days)
    metrics.register(metrics.CHECK)
    state = health.Health("check")
    server = health.serve(state, conf.metrics_host, conf.metrics_port)

    puller = Puller(conf.zmq_pull or cfg.DEFAULT_INGEST_ENDPOINT, conf.zmq_hwm, settings=conf)
    pusher = Pusher(conf.zmq_push or cfg.DEFAULT_PERSIST_ENDPOINT, conf.zmq_hwm, "check")
    checker = Checker(SequenceTracker(feed_semantics, conf.sequence_max_streams))
    bad = metrics.BAD_MESSAGES.labels(stage="check")
    state.dropped = lambda: pusher.dropped_records
    state.last_drop = lambda: pusher.last_drop_monotonic
    state.details = lambda: {"gaps": checker.gaps}
    state.ready = True
    logger.info("check: pulling {}, pushing {}", puller.endpoint, pusher.endpoint)

    def handle(frames: list) -> None:
        kind = frames[0].bytes
        try:
            if kind == RECORDS:
                rows = decode_headers([kind, frames[1].bytes, frames[2].buffer])
                checker.check(rows, time.monotonic())
                pusher.send(frames, len(rows))
            elif kind == EVENTS:
                decode_events([kind, frames[1].bytes])
                pusher.send(frames, 0)
            else:
                raise WireError(f"unknown message kind {kind[:8]!r}")
        except (WireError, TypeError, ValueError, OverflowError) as exc:  # a broken peer's message, not ours to die of
            bad.inc()
            logger.warning("check: dropped a malformed message: {}", exc)

    def send_gap_log(gaps: list[dict]) -> None:
        checker.count_gaps(gaps)
        rows = gaps + checker.anomaly_rows()
        if rows:
            pusher.send(encode_events(rows), 0)

    last_confirm = last_anomalies = time.monotonic()
    while not stop.is_set():
        frames = puller.recv(100)
        if frames is not None:
            handle(frames)
        now = time.monotonic()
        if now - last_confirm >= CONFIRM_EVERY_SECS:
            gaps = checker.tracker.confirm(now)
            if gaps or now - last_anomalies >= ANOMALY_ROWS_EVERY_SECS:
                send_gap_log(gaps)
                last_anomalies = now
            last_confirm = now
            state.records_total = checker.records
            state.progressed()

    logger.info("check: stopping; draining what ingest already sent")
    deadline = time.monotonic() + DRAIN_SECS
    while time.monotonic() < deadline and (frames := puller.recv(200)) is not None:
        handle(frames)
    send_gap_log(checker.tracker.confirm_all())
    pusher.close(linger_ms=4000)
    puller.close()
    server.shutdown()
    logger.info("check: stopped; forwarded {} records ({} duplicates), {} gaps", checker.records, checker.duplicates,
                checker.gaps)
