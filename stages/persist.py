"""persist: PULL from check -> batched, deduplicated DuckDB inserts -> sealed Parquet in the outbox.

The only process that opens the DuckDB file. Every BATCH_INTERVAL the records received since the
last insert go in as one Arrow table; every ARCHIVE_INTERVAL_SECS (at once on SIGUSR1) the stored
rows are sealed into outbox files for archive. Inserts and seals run on a thread of their own while
the main loop keeps receiving; a batch waits while the one before it is still being written. On
SIGTERM it drains what check already sent, inserts it, seals too if SEAL_ON_EXIT, and exits 0.
"""
from __future__ import annotations

import collections
import dataclasses
import operator
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import click
import duckdb
import pyarrow as pa
from loguru import logger

from pipeline import config as cfg
from pipeline.crashpoints import crash_point
from pipeline import health, logs, metrics
from pipeline.losses import LossTracker
from pipeline.records import EVENTS, RECORDS, WireError, decode_events, decode_headers, now_us
from pipeline.storage import SNAPSHOT_SCHEMA, Store, StoreLocked, batch_from_wire
from pipeline.transport import Puller
from pipeline.wal import WriteAheadLog

MAX_HELD_BYTES = 512 * 2**20  # raw JSON held in memory; past it, stop pulling: ZeroMQ's high-water marks push back upstream
DRAIN_SECS = 4.0
# A checkpoint makes the inserts before it durable in DuckDB (pipeline.storage) and lets the write-ahead
# log drop what they covered. Bounds on what a restart replays, and on how long one checkpoint takes.
CHECKPOINT_BYTES = 64 * 2**20  # ~0.3 s a checkpoint (books or trades, measured)
CHECKPOINT_SECS = 60.0


def error_type(exc: Exception) -> str:
    if isinstance(exc, duckdb.ConstraintException):
        return "duplicate" if "duplicate" in str(exc).lower() else "constraint"
    if isinstance(exc, (duckdb.IOException, OSError)):
        return "io"
    return "other"


class Buffer:
    """Records and gap rows received since the last insert, and the ``lost`` rows their numbers reveal."""

    def __init__(self, losses: LossTracker) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.events: list[dict] = []
        self.records = 0
        self.nbytes = 0  # of the records' raw JSON
        self.losses = losses

    def add(self, frames: list) -> None:
        """Adds one wire message (its frames as bytes-like objects); WireError if it is not one."""
        kind = frames[0]
        if kind == RECORDS:
            rows = decode_headers(frames)
            if rows:
                try:
                    batch = batch_from_wire(rows, frames[2])
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                    raise WireError(f"records do not fit the table: {exc}") from None
                lost = self.losses.observe(rows)
                self.batches.append(batch)
                self.records += len(rows)
                self.nbytes += len(frames[2])
                for event in lost:
                    self.events.append(event)
                    metrics.RECORDS_LOST.labels(exchange=event["exchange"], symbol=event["symbol"],
                                                data_type=event["data_type"]).inc(event["missing"])
                    logger.warning("lost on the way from ingest: {missing} {exchange}:{symbol}:{data_type} records "
                                   "after id {expected}, before id {received}", **event)
                for (exchange, symbol, data_type), count in _per_stream(rows).items():
                    metrics.MESSAGES_RECEIVED.labels(stage="persist", exchange=exchange, symbol=symbol, data_type=data_type).inc(count)
        elif kind == EVENTS:
            self.events.extend(decode_events(frames))
        else:
            raise WireError(f"unknown message kind {kind[:8]!r}")


def _per_stream(rows: list[list]) -> collections.Counter:
    return collections.Counter(map(_STREAM_OF, rows))


_STREAM_OF = operator.itemgetter(0, 1, 2)


@dataclasses.dataclass
class Batch:
    """What one insert stores: the records and gap rows of write-ahead-log generations up to ``generation``."""

    batches: list[pa.RecordBatch]
    events: list[dict]
    records: int
    nbytes: int
    generation: int
    progress: list[tuple]  # LossTracker.rows() after the last of these messages


class Persister:
    """The buffer, its write-ahead log and the store: what persist holds is always in one of them. A
    message leaves the log once a checkpoint made the insert that stored it durable.

    ``receive`` and ``take`` belong to the receiving thread, ``write`` and ``seal_stored`` to the one
    thread that uses DuckDB; ``take`` is called only while no ``write`` runs."""

    def __init__(self, store: Store, wal: WriteAheadLog, conf: cfg.Config):
        self.store, self.wal, self.conf = store, wal, conf
        self.losses = LossTracker()
        self.losses.load(store.stream_progress())
        self.buffer = Buffer(self.losses)
        self.failed: Batch | None = None  # an insert that failed: its rows go again with the next batch
        self.taken: Batch | None = None  # taken for an insert not yet committed
        self.written = 0
        self.committed_generation = store.committed_generation()
        self.bytes_since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.outbox = Path(conf.data_dir) / "outbox"

    def held(self) -> tuple[int, int]:
        """Records and bytes persist holds in memory: buffered, or taken for an insert not yet committed."""
        waiting = [b for b in (self.taken, self.failed) if b is not None]
        return (self.buffer.records + sum(b.records for b in waiting),
                self.buffer.nbytes + sum(b.nbytes for b in waiting))

    def receive(self, frames: list) -> None:
        self.buffer.add(frames)
        self.wal.append(frames)

    def replay_log(self) -> int:
        """Re-reads what a killed persist had received but not committed; returns the message count."""
        count = 0
        for frames in self.wal.replay(after=self.store.committed_generation()):
            try:
                self.buffer.add(frames)
                count += 1
            except WireError as exc:
                logger.warning("write-ahead log: skipped a damaged message: {}", exc)
        return count

    def take(self) -> Batch | None:
        """What arrived since the last take, with a failed batch's rows; the log rotates so that the
        insert can say which generations it covers."""
        buffer, failed = self.buffer, self.failed
        if not buffer.batches and not buffer.events and failed is None:
            return None
        self.buffer, self.failed = Buffer(self.losses), None
        batch = Batch(buffer.batches, buffer.events, buffer.records, buffer.nbytes, self.wal.rotate(), self.losses.rows())
        if failed is not None:
            batch.batches[:0], batch.events[:0] = failed.batches, failed.events
            batch.records, batch.nbytes = batch.records + failed.records, batch.nbytes + failed.nbytes
        self.taken = batch
        return batch

    def write(self, batch: Batch | None) -> None:
        """One insert; a failed one is kept (``failed``) for the next ``take``."""
        if batch is None:
            return
        table = pa.Table.from_batches(batch.batches, schema=SNAPSHOT_SCHEMA) if batch.batches else None
        crash_point("persist.before_insert")
        started = time.perf_counter()
        try:
            self.wal.sync(batch.generation)
            inserted = self.store.insert(table, batch.events, batch.generation, batch.progress)
        except Exception as exc:  # noqa: BLE001 - categorised, counted, and the rows are kept
            kind = error_type(exc)
            metrics.DB_INSERT_ERRORS.labels(error_type=kind).inc()
            logger.error("insert of {} records failed ({}): {}; keeping them for the next try", batch.records, kind, exc)
            self.failed = batch
            return
        finally:
            self.taken = None
        crash_point("persist.after_insert")
        metrics.DB_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.DB_SNAPSHOTS_WRITTEN.inc(inserted)
        self.written += inserted
        if table is not None and table.num_rows > inserted:
            metrics.DB_DUPLICATES_SKIPPED.inc(table.num_rows - inserted)
            logger.debug("skipped {} records already stored", table.num_rows - inserted)
        self.committed_generation = batch.generation
        self.bytes_since_checkpoint += batch.nbytes
        if self.bytes_since_checkpoint >= CHECKPOINT_BYTES or time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Makes every committed insert durable in the DuckDB file, then drops the log files they came from."""
        try:
            self.store.checkpoint()
        except Exception as exc:  # noqa: BLE001 - the log keeps the messages; the next insert tries again
            metrics.DB_INSERT_ERRORS.labels(error_type=error_type(exc)).inc()
            logger.error("checkpoint failed, the write-ahead log keeps what it covers: {}", exc)
            return
        self.checkpointed()

    def checkpointed(self) -> None:
        self.wal.discard_through(self.committed_generation)
        self.bytes_since_checkpoint = 0
        self.last_checkpoint = time.monotonic()

    def close(self) -> None:
        """The last checkpoint; the log keeps only what no insert committed."""
        self.store.close()
        self.checkpointed()
        self.wal.close()

    def write_and_seal(self, batch: Batch | None) -> None:
        self.write(batch)
        self.seal_stored()

    def flush(self) -> None:
        self.write(self.take())

    def seal(self) -> None:
        self.losses.forget_idle(now_us())
        self.write_and_seal(self.take())

    def seal_stored(self) -> None:
        """Moves every committed row into outbox files."""
        started = time.perf_counter()
        try:
            files = self.store.seal(self.outbox, self.conf.home_server_name, self.conf.archive_interval_secs)
        except Exception as exc:  # noqa: BLE001 - the rows stay in DuckDB (or sealing_*) for the next seal
            metrics.DB_INSERT_ERRORS.labels(error_type=error_type(exc)).inc()
            logger.error("seal failed, rows kept in DuckDB for the next one: {}", exc)
            return
        self.checkpointed()  # a seal ends with a checkpoint
        metrics.SEALS_COMPLETED.inc()
        logger.info("sealed {} file(s) into {} in {:.2f}s", len(files), self.outbox, time.perf_counter() - started)


@click.command()
@cfg.options("ZMQ_PULL", "ZMQ_HWM", "DATA_DIR", "BATCH_INTERVAL", "ARCHIVE_INTERVAL_SECS", "HOME_SERVER_NAME",
             "DEDUP_WINDOW_SECS", "SEAL_ON_EXIT", "DUCKDB_MEMORY_LIMIT", "METRICS_PORT", "METRICS_HOST",
             "LOG_LEVEL", "LOG_DIR", "LOG_RETENTION_DAYS")
def command(**raw: str | None) -> None:
    """The DuckDB stage: batched deduplicated inserts, sealed into Parquet files for archive."""
    stop, seal_now = threading.Event(), threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: seal_now.set())
    conf = cfg.load(raw)
    logs.setup("persist", conf.log_level, conf.log_dir, conf.log_retention_days)
    try:
        store = Store(Path(conf.data_dir) / "collector.duckdb", conf.duckdb_memory_limit, conf.dedup_window_secs)
    except StoreLocked as exc:
        click.echo(f"persist: {exc}", err=True)
        sys.exit(1)
    persister = Persister(store, WriteAheadLog(Path(conf.data_dir) / "wal"), conf)
    replayed = persister.replay_log()
    if replayed:
        persister.flush()
        logger.info("write-ahead log: recovered {} message(s) received before a crash", replayed)
    recovered = store.recover(persister.outbox, conf.home_server_name)
    if recovered:
        logger.info("finished a seal interrupted by a crash: {} file(s)", len(recovered))
    metrics.register(metrics.PERSIST)
    state = health.Health("persist")
    server = health.serve(state, conf.metrics_host, conf.metrics_port)

    puller = Puller(conf.zmq_pull or cfg.DEFAULT_PERSIST_ENDPOINT, conf.zmq_hwm)
    bad = metrics.BAD_MESSAGES.labels(stage="persist")
    state.ready = True
    state.details = lambda: {"buffered_records": persister.held()[0]}
    logger.info("persist: pulling {}, DuckDB {}", puller.endpoint, Path(conf.data_dir) / "collector.duckdb")
    # DuckDB's work (inserts, seals) runs on this one thread, so that receiving goes on meanwhile: a
    # long seal no longer fills the queues upstream, and an insert overlaps the next batch's decoding.
    duckdb_thread = ThreadPoolExecutor(1, thread_name_prefix="duckdb")
    writing: Future | None = None

    def duckdb_busy() -> bool:
        nonlocal writing
        if writing is None or not writing.done():
            return writing is not None
        if writing.exception() is not None:  # a bug, not a DuckDB error (those are caught and counted)
            logger.opt(exception=writing.exception()).error("persist: DuckDB thread failed")
        writing = None
        return False

    def receive(frames: list) -> None:
        parts = [frames[0].bytes] + [frame.buffer for frame in frames[1:]]
        try:
            persister.receive(parts)
        except WireError as exc:
            bad.inc()
            logger.warning("persist: dropped a malformed message: {}", exc)

    next_flush = time.monotonic() + conf.batch_interval
    next_seal = time.monotonic() + conf.archive_interval_secs
    while not stop.is_set():
        due = time.monotonic() >= next_flush or seal_now.is_set()
        if persister.held()[1] < MAX_HELD_BYTES:
            # while DuckDB is busy with the last batch, this one waits for it and grows
            wait_secs = 0.05 if due else min(0.2, next_flush - time.monotonic())
            frames = puller.recv(int(max(0.0, wait_secs) * 1000))
            while frames is not None:
                receive(frames)
                if persister.held()[1] >= MAX_HELD_BYTES or (time.monotonic() >= next_flush and not duckdb_busy()):
                    break  # a busy queue must not postpone the batch: it would only grow and stall
                frames = puller.recv_nowait()
        else:
            stop.wait(0.2)
        now = time.monotonic()
        metrics.CHANNEL_QUEUE_DEPTH.labels(stage="persist").set(persister.held()[0])
        if (now >= next_flush or seal_now.is_set()) and not duckdb_busy():
            if seal_now.is_set() or now >= next_seal:
                seal_now.clear()
                persister.losses.forget_idle(now_us())
                writing = duckdb_thread.submit(persister.write_and_seal, persister.take())
                next_seal = now + conf.archive_interval_secs
            else:
                writing = duckdb_thread.submit(persister.write, persister.take())
            next_flush = now + conf.batch_interval
        state.records_total = persister.written
        state.progressed()

    logger.info("persist: stopping; draining and flushing")
    deadline = time.monotonic() + DRAIN_SECS
    while time.monotonic() < deadline and (frames := puller.recv(300)) is not None:
        receive(frames)
    duckdb_thread.shutdown(wait=True)
    if conf.seal_on_exit:
        persister.seal()
    else:
        persister.flush()
    puller.close()
    persister.close()
    server.shutdown()
    logger.info("persist: stopped")
