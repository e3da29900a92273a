"""Every metric, declared once with its type, labels, meaning and the stages that export it.

Names are the original system's so that existing dashboards and alerts keep working. A stage calls
``register(stage)`` at start-up and serves only its own metrics.
"""
from __future__ import annotations

import time

import bisect
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

_BY_STAGE: dict[str, list[Collector]] = {}

INGEST, CHECK, PERSIST, ARCHIVE = "ingest", "check", "persist", "archive"
ALL = (INGEST, CHECK, PERSIST, ARCHIVE)


def _declare(kind, name: str, doc: str, labels: tuple[str, ...], stages: tuple[str, ...], **kwargs):
    metric = kind(name, doc, labels, registry=None, **kwargs)
    for stage in stages:
        _BY_STAGE.setdefault(stage, []).append(metric)
    return metric


class BatchHistogram(Collector):
    """A Prometheus histogram fed a batch of values at a time.

    prometheus-client's Histogram takes a lock per observation; check sees every record, so it
    counts a message's values into buckets itself and adds them under one lock.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]):
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe_many(self, labels: tuple[str, ...], values: list[float]) -> None:
        counts = [0] * (len(self.bounds) + 1)
        for value in values:
            counts[bisect.bisect_left(self.bounds, value)] += 1
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = ([0] * len(counts), [0.0])
            for i, n in enumerate(counts):
                series[0][i] += n
            series[1][0] += sum(values)

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        with self._lock:
            snapshot = [(labels, list(counts), total[0]) for labels, (counts, total) in self._series.items()]
        for labels, counts, total in snapshot:
            cumulative, running = [], 0
            for bound, n in zip(self.bounds + (float("inf"),), counts):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric(list(labels), cumulative, sum_value=total)
        yield family

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))]


def register(stage: str) -> None:
    for metric in _BY_STAGE.get(stage, []):
        REGISTRY.register(metric)
    START_TIMESTAMP.labels(stage=stage).set(int(time.time()))


STREAM = ("exchange", "symbol", "data_type")
LATENCY_BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

# -- every stage
START_TIMESTAMP = _declare(Gauge, "collector_start_timestamp_seconds", "Unix time the stage started", ("stage",), ALL)
MESSAGES_RECEIVED = _declare(
    Counter, "collector_messages_received_total", "Records received by the stage", ("stage",) + STREAM, (INGEST, CHECK, PERSIST)
)
MESSAGES_DROPPED = _declare(
    Counter, "collector_messages_dropped_total", "Records dropped because the next stage's queue was full", ("stage",), (INGEST, CHECK)
)
BAD_MESSAGES = _declare(
    Counter, "collector_bad_messages_total", "ZeroMQ messages that did not follow the wire format", ("stage",), (CHECK, PERSIST)
)

# -- ingest
WEBSOCKET_CONNECTED = _declare(
    Gauge, "collector_websocket_connected", "1 while the WebSocket connection is up", ("exchange", "connection"), (INGEST,)
)
WEBSOCKET_RECONNECTS = _declare(
    Counter, "collector_websocket_reconnects_total", "WebSocket reconnections", ("exchange",), (INGEST,)
)
LAST_MESSAGE_TIMESTAMP = _declare(
    Gauge, "collector_last_message_timestamp_seconds", "Unix time of the stream's last record (whole seconds)", STREAM, (INGEST,)
)
STREAM_STALE = _declare(
    Gauge, "collector_stream_stale", "1 while the stream is silent longer than its expected cadence on a live connection", STREAM, (INGEST,)
)
MESSAGE_TIMEOUTS = _declare(
    Counter, "collector_message_timeouts_total", "Connections closed because no frame came within WS_MESSAGE_TIMEOUT_SECS", ("exchange",), (INGEST,)
)
PARSE_ERRORS = _declare(
    Counter, "collector_parse_errors_total", "Frames that could not be parsed", ("exchange",), (INGEST,)
)
PARSE_CIRCUIT_BREAKS = _declare(
    Counter, "collector_parse_circuit_breaks_total", "Reconnects because too many frames failed to parse", ("exchange",), (INGEST,)
)
CONTROL_MESSAGES = _declare(
    Counter, "collector_control_messages_total", "Acks, heartbeats, pongs, errors and unknown messages", ("exchange", "kind"), (INGEST,)
)
OVERSIZED_FRAMES = _declare(
    Counter, "collector_oversized_frames_total", "Frames refused for exceeding MAX_FRAME_BYTES", ("exchange",), (INGEST,)
)
BOOK_RESYNCS = _declare(
    Counter, "collector_book_resyncs_total", "Book channels re-subscribed to get a fresh snapshot", ("exchange", "symbol", "reason"), (INGEST,)
)
BOOK_CHECKSUM_FAILURES = _declare(
    Counter, "collector_book_checksum_failures_total", "Book messages whose exchange checksum did not match", ("exchange", "symbol"), (INGEST,)
)

# -- check
SEQUENCE_GAPS = _declare(Counter, "collector_sequence_gaps_total", "Sequence gaps", STREAM, (CHECK,))
SEQUENCE_GAP_SIZE = _declare(
    Histogram, "collector_sequence_gap_size", "Missing ids per gap", STREAM, (CHECK,), buckets=(1, 2, 5, 10, 100, 1000, 10000)
)
SEQUENCE_OUT_OF_ORDER = _declare(Counter, "collector_sequence_out_of_order_total", "Records older than the stream's newest", STREAM, (CHECK,))
SEQUENCE_DUPLICATES = _declare(Counter, "collector_sequence_duplicates_total", "Records seen before", STREAM, (CHECK,))
LATENCY = BatchHistogram("collector_latency_exchange_to_collector_ms", "Exchange event time to receipt, ms",
                         ("exchange", "data_type"), LATENCY_BUCKETS_MS)
_BY_STAGE.setdefault(CHECK, []).append(LATENCY)
NEGATIVE_LATENCY = _declare(
    Counter, "collector_latency_negative_total", "Records received before their exchange time (clock skew)", ("exchange",), (CHECK,)
)

# -- persist
CHANNEL_QUEUE_DEPTH = _declare(Gauge, "collector_channel_queue_depth", "Records waiting for the next batch insert", ("stage",), (PERSIST,))
DB_WRITE_SECONDS = _declare(Histogram, "collector_db_write_seconds", "Time of one batch insert", (), (PERSIST,))
DB_SNAPSHOTS_WRITTEN = _declare(Counter, "collector_db_snapshots_written_total", "Rows inserted into DuckDB", (), (PERSIST,))
DB_DUPLICATES_SKIPPED = _declare(
    Counter, "collector_db_duplicates_skipped_total", "Records already stored (reconnect repeats), not stored again", (), (PERSIST,)
)
RECORDS_LOST = _declare(
    Counter, "collector_records_lost_total",
    "Records ingest sent that never reached persist (dropped at a high-water mark, or in a killed stage's queue)",
    STREAM, (PERSIST,))
DB_INSERT_ERRORS = _declare(Counter, "collector_db_insert_errors_total", "Failed inserts by category", ("error_type",), (PERSIST,))
SEALS_COMPLETED = _declare(Counter, "collector_seals_completed_total", "Seals of DuckDB rows into outbox Parquet files", (), (PERSIST,))
ROWS_SEALED = _declare(Counter, "collector_rows_sealed_total", "Rows moved from DuckDB into outbox files", ("table",), (PERSIST,))

# -- archive
ARCHIVES_COMPLETED = _declare(Counter, "collector_archives_completed_total", "Files uploaded, verified and deleted locally", (), (ARCHIVE,))
SNAPSHOTS_ARCHIVED = _declare(Counter, "collector_snapshots_archived_total", "Rows in archived files", (), (ARCHIVE,))
S3_UPLOAD_SECONDS = _declare(Histogram, "collector_s3_upload_seconds", "Time of one upload", (), (ARCHIVE,))
S3_UPLOAD_FAILURES = _declare(Counter, "collector_s3_upload_failures_total", "Uploads that failed after every retry", (), (ARCHIVE,))
S3_UPLOAD_RETRIES = _declare(Counter, "collector_s3_upload_retries_total", "Upload attempts retried", (), (ARCHIVE,))
ARCHIVE_FAILURES = _declare(Counter, "collector_archive_failures_total", "Archive failures by step", ("stage",), (ARCHIVE,))
OUTBOX_FILES = _declare(Gauge, "collector_outbox_files", "Sealed files waiting in the outbox", (), (ARCHIVE,))
