"""Per-stage microbenchmarks, each in this one process on one core (one thread).

* ``parse``: ``pipeline.exchanges.REGISTRY[name].parse`` looped over that exchange's recorded frames
  (the shared fixtures), trades and books apart. Binance's book feed has no recording (only a
  one-level doc example), so its book frames are the load generator's 20-level depth20 frames.
* ``check``: ``stages.check.Checker.check`` on header rows of one contiguous trade stream, 512 per
  message as ingest sends them (plus ``decode_headers``, the rest of check's work per message).
* ``batch_from_wire``: persist's receive work, wire message -> Arrow batch.
* ``persist``: ``pipeline.storage.Store.insert`` (dedup on: the anti-join against ``stored_keys``)
  with Arrow tables built the way persist builds them (``batch_from_wire`` per 512-record message,
  ``Table.from_batches`` per flush), batch after batch of fresh keys, so ``stored_keys`` (and
  ``snapshots``) grow; the rate is reported per third of the growth.
* ``seal``: ``Store.seal`` of everything inserted above into zstd Parquet files.
* ``archive``: ``pipeline.targets.S3Target`` upload (``put``) and verification (``size``) of the
  sealed files plus one incompressible file to moto's S3 server on loopback (its own process).
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.loadgen import fixture_lines, payloads

FIXTURES = {
    "binance": {"trade": "binance/trade.jsonl", "book": None},  # None: the load generator's depth20 frames
    "coinbase": {"trade": "coinbase/matches.jsonl", "book": "coinbase/level2.jsonl"},
    "upbit": {"trade": "upbit/trade.jsonl", "book": "upbit/orderbook.jsonl"},
    "okx": {"trade": "okx/trades.jsonl", "book": "okx/books.jsonl"},
    "bybit": {"trade": "bybit/publicTrade.jsonl", "book": "bybit/orderbook.200.jsonl"},
}


def _timed_loop(work, items: list, seconds: float) -> tuple[int, float, int]:
    """Calls ``work`` on the items round and round for about ``seconds``; (calls, seconds, sum of results)."""
    calls = produced = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for item in items:
            produced += work(item)
        calls += len(items)
        if time.perf_counter() >= deadline:
            break
    return calls, time.perf_counter() - started, produced


def parse(seconds: float, rounds: int = 5) -> dict:
    """Each parser is timed in ``rounds`` tries of ``seconds / rounds``, the tries of all parsers taken in
    turn, and its fastest try counts. As ``timeit`` advises: this VM's speed drifts by up to 2x for
    seconds at a time (its host's other tenants, not steal time), so a slow try measures the host; taking
    turns spreads each parser's tries over the whole section."""
    from pipeline.exchanges import REGISTRY

    out: dict = {}
    cases = []
    for name, exchange in REGISTRY.items():
        kinds = FIXTURES.get(name, {"trade": f"{name}/trade.jsonl", "book": f"{name}/orderbook.jsonl"})
        out[name] = {}
        for kind, relative in kinds.items():
            if relative is None:
                frames, source = payloads("btcusdt@depth20@100ms", 200), "load generator depth20 (no recording)"
            else:
                frames, source = fixture_lines(relative), relative
            if not frames:
                out[name][kind] = {"error": f"fixture {relative} missing", "source": source}
                continue
            records = [len(exchange.parse(f).records) for f in frames]
            out[name][kind] = {
                "frames": len(frames),
                "record_frames": sum(1 for r in records if r),
                "mean_bytes": sum(map(len, frames)) / len(frames),
                "errors": sum(1 for f in frames if exchange.parse_safely(f).error is not None),
                "source": source,
            }
            cases.append((out[name][kind], exchange.parse, frames))
    for _ in range(rounds):
        for result, parse_frame, frames in cases:
            calls, elapsed, produced = _timed_loop(lambda f, p=parse_frame: len(p(f).records), frames, seconds / rounds)
            if calls / elapsed > result.get("frames_per_s", 0):
                result.update(frames_per_s=calls / elapsed, records_per_s=produced / elapsed)
    return out


def _trade_rows(first_id: int, count: int, epoch: str) -> list[list]:
    now = time.time_ns() // 1000
    return [["binance", "btcusdt", "trade", str(i), now, now - 5000, i, i - 1, False, epoch, 172, i]
            for i in range(first_id, first_id + count)]


def check(seconds: float) -> dict:
    import orjson

    from pipeline.records import RECORDS, decode_headers
    from pipeline.sequence import SequenceTracker
    from stages.check import Checker, feed_semantics

    checker = Checker(SequenceTracker(feed_semantics, 10_000))
    next_id = 1_000_000
    checked = decoded = 0
    check_time = decode_time = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        rows = _trade_rows(next_id, 512, "1.0.1")
        next_id += 512
        frames = [RECORDS, orjson.dumps(rows), b"x" * (172 * 512)]
        started = time.perf_counter()
        decoded_rows = decode_headers(frames)
        middle = time.perf_counter()
        checker.check(decoded_rows, time.monotonic())
        done = time.perf_counter()
        decode_time += middle - started
        check_time += done - middle
        checked += len(rows)
        decoded += len(rows)
    return {"check_per_s": checked / check_time, "decode_per_s": decoded / decode_time,
            "stage_per_s": checked / (check_time + decode_time), "records": checked}


def _wire_messages(first_id: int, count: int, per_message: int = 512, books: bool = False) -> list[list]:
    """Wire messages of ``count`` fresh trades (or depth20 books), decoded as persist sees them: [rows, data]."""
    import orjson

    from pipeline.records import RECORDS, decode_headers, encode_records

    datas = payloads("btcusdt@depth20@100ms" if books else "btcusdt@trade", count, first_id)
    data_type = "orderbook" if books else "trade"
    now = time.time_ns() // 1000
    out = []
    for start in range(0, count, per_message):
        chunk = datas[start:start + per_message]
        headers = [("binance", "btcusdt", data_type, str(first_id + start + j), now, None if books else now - 5000,
                    first_id + start + j, None if books else first_id + start + j - 1, False, "1.0.1", len(d),
                    first_id + start + j) for j, d in enumerate(chunk)]
        frames = encode_records(headers, chunk)
        rows = decode_headers([RECORDS, frames[1], frames[2]])
        out.append([rows, frames[2]])
    del orjson
    return out


def _inserter(store):
    """``Store.insert`` as this version of storage.py takes it: (table) or (table, events, wal_generation),
    followed by the checkpoints persist makes (every CHECKPOINT_BYTES) where DuckDB does not make them
    inside a COMMIT."""
    parameters = inspect.signature(store.insert).parameters
    if "wal_generation" not in parameters:
        return store.insert
    generation = itertools.count(1)
    if not hasattr(store, "checkpoint"):
        return lambda table: store.insert(table, [], next(generation))
    from stages.persist import CHECKPOINT_BYTES

    unsaved = 0

    def insert_and_checkpoint(table):
        nonlocal unsaved
        inserted = store.insert(table, [], next(generation))
        unsaved += table.column("data").nbytes
        if unsaved >= CHECKPOINT_BYTES:
            store.checkpoint()
            unsaved = 0
        return inserted

    return insert_and_checkpoint


def _wal(folder: Path):
    """persist's write-ahead log, where this version has one (None otherwise)."""
    try:
        from pipeline.wal import WriteAheadLog
    except ImportError:
        return None
    return WriteAheadLog(folder / "wal")


def persist(total_keys: int, batch_rows: int, folder: Path, moto_port: int | None, archive_extra_mb: int) -> dict:
    import pyarrow as pa

    from pipeline.records import RECORDS
    from pipeline.storage import SNAPSHOT_SCHEMA, Store, batch_from_wire

    store = Store(folder / "collector.duckdb", "1GB", 3600.0)
    insert = _inserter(store)
    wal = _wal(folder)
    wal_rows = wal_time = 0.0
    inserts: list[tuple[int, int, float]] = []  # (stored_keys before, rows inserted, seconds)
    wire_rows = wire_time = 0.0
    next_id = 5_000_000_000
    stored = 0
    try:
        while stored < total_keys:
            messages = _wire_messages(next_id, batch_rows)
            next_id += batch_rows
            started = time.perf_counter()
            batches = [batch_from_wire(rows, data) for rows, data in messages]
            table = pa.Table.from_batches(batches, schema=SNAPSHOT_SCHEMA)
            wire_time += time.perf_counter() - started
            wire_rows += table.num_rows
            if wal is not None:  # what persist also does per message and per flush
                started = time.perf_counter()
                for rows, data in messages:
                    wal.append([RECORDS, b"%d" % len(rows), data])
                generation = wal.rotate()
                if hasattr(wal, "sync"):
                    wal.sync(generation)
                wal.discard_through(generation)
                wal_time += time.perf_counter() - started
                wal_rows += table.num_rows
            started = time.perf_counter()
            inserted = insert(table)
            inserts.append((stored, inserted, time.perf_counter() - started))
            stored += inserted
        # a repeat of the last batch: everything is a duplicate (the reconnect case)
        started = time.perf_counter()
        repeated = insert(table)
        duplicate_seconds = time.perf_counter() - started
        outbox = folder / "outbox"
        started = time.perf_counter()
        files = store.seal(outbox, "", 3600)
        seal_seconds = time.perf_counter() - started
    finally:
        store.close()
        if wal is not None:
            wal.close()
    thirds = []
    for k in range(3):
        low, high = total_keys * k / 3, total_keys * (k + 1) / 3
        part = [(n, s) for before, n, s in inserts if low <= before < high]
        rows = sum(n for n, _ in part)
        secs = sum(s for _, s in part)
        thirds.append({"from_keys": int(low), "to_keys": int(high), "rows_per_s": rows / secs if secs else None,
                       "inserts": len(part)})
    sealed_bytes = sum(f.stat().st_size for f in files)
    result = {
        "batch_rows": batch_rows,
        "total_keys": stored,
        "insert_thirds": thirds,
        "insert_rows_per_s": sum(n for _, n, _ in inserts) / sum(s for _, _, s in inserts),
        "duplicate_batch_rows_per_s": table.num_rows / duplicate_seconds if duplicate_seconds else None,
        "duplicate_batch_inserted": repeated,
        "batch_from_wire_rows_per_s": wire_rows / wire_time if wire_time else None,
        "wal_rows_per_s": wal_rows / wal_time if wal_time else None,
        "seal": {"rows": stored, "seconds": seal_seconds, "rows_per_s": stored / seal_seconds, "files": len(files),
                 "bytes": sealed_bytes},
    }
    if moto_port:
        result["archive"] = archive(files, moto_port, folder, archive_extra_mb)
    return result


def persist_books(total_rows: int, batch_rows: int, folder: Path) -> dict:
    """``Store.insert`` of depth20 book rows (~1.37 KB of raw JSON each) into a fresh store."""
    from pipeline.storage import Store

    folder.mkdir(parents=True, exist_ok=True)
    rows, seconds = _timed_inserts(Store(folder / "collector.duckdb", "1GB", 3600.0), total_rows, batch_rows,
                                   40_000_000_000, books=True)
    return {"rows": rows, "batch_rows": batch_rows, "rows_per_s": rows / seconds if seconds else None,
            "mb_per_s": rows * 1368 / 2**20 / seconds if seconds else None}


def _timed_inserts(store, total_rows: int, batch_rows: int, first_id: int, books: bool = False) -> tuple[int, float]:
    """Fresh rows, inserted as persist inserts them until ``total_rows`` are stored, then the store
    closed: (rows, seconds spent in the inserts)."""
    import pyarrow as pa

    from pipeline.storage import SNAPSHOT_SCHEMA, batch_from_wire

    insert = _inserter(store)
    rows = 0
    seconds = 0.0
    next_id = first_id
    try:
        while rows < total_rows:
            messages = _wire_messages(next_id, batch_rows, books=books)
            next_id += batch_rows
            table = pa.Table.from_batches([batch_from_wire(r, d) for r, d in messages], schema=SNAPSHOT_SCHEMA)
            started = time.perf_counter()
            rows += insert(table)
            seconds += time.perf_counter() - started
    finally:
        store.close()
    return rows, seconds


def start_moto() -> tuple[subprocess.Popen, int]:
    port = common.free_port()
    process = subprocess.Popen([common.python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True

    if not common.wait_until(up, 30, 0.1):
        process.kill()
        raise RuntimeError("moto server did not start")
    return process, port


def archive(files: list[Path], port: int, folder: Path, extra_mb: int) -> dict:
    # moto accepts any credentials; these are its documented dummy values, for this process only
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from pipeline.targets import S3Target

    extra = folder / "incompressible.parquet"
    extra.write_bytes(os.urandom(extra_mb * 2**20))
    target = S3Target(f"bench-{os.getpid()}-{int(time.time() * 1000)}", "us-east-1", f"http://127.0.0.1:{port}")
    target.prepare()
    total_bytes = 0
    put_seconds = verify_seconds = 0.0
    verified = 0
    for path in list(files) + [extra]:
        key = f"bench/{path.name}"
        size = path.stat().st_size
        started = time.perf_counter()
        target.put(path, key)
        middle = time.perf_counter()
        remote = target.size(key)
        done = time.perf_counter()
        put_seconds += middle - started
        verify_seconds += done - middle
        total_bytes += size
        verified += remote == size
    return {"files": len(files) + 1, "verified": verified, "bytes": total_bytes,
            "mb_per_s": total_bytes / 2**20 / (put_seconds + verify_seconds),
            "put_mb_per_s": total_bytes / 2**20 / put_seconds, "verify_seconds": verify_seconds}


def persist_after_an_hour(window_keys: int, total_rows: int, batch_rows: int, folder: Path) -> dict:
    """``Store.insert`` of fresh trades into a store that already remembers ``window_keys`` keys received
    over the last hour, as persist's does after an hour at window_keys / 3600 records/s."""
    from pipeline.storage import Store

    folder.mkdir(parents=True, exist_ok=True)
    store = Store(folder / "collector.duckdb", "1GB", 3600.0)
    hour_ago, step = time.time_ns() // 1000 - 3_600_000_000, 3_600_000_000 // max(1, window_keys)
    store.con.execute(f"INSERT INTO stored_keys SELECT md5_number(i::VARCHAR), {hour_ago} + i * {step} "
                      f"FROM range({window_keys}) AS keys(i)")
    store.checkpoint()
    rows, seconds = _timed_inserts(store, total_rows, batch_rows, 6_000_000_000)
    return {"window_keys": window_keys, "rows": rows, "batch_rows": batch_rows,
            "rows_per_s": rows / seconds if seconds else None}


def run_all(seconds: float, total_keys: int, batch_rows: int, archive_extra_mb: int, moto_port: int | None,
            book_rows: int = 300_000, book_batch: int = 15_000, hour_keys: int = 20_000_000) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-micro-"))
    try:
        out = {"parse": parse(seconds), "check": check(seconds)}
        out["persist"] = persist(total_keys, batch_rows, folder, moto_port, archive_extra_mb)
        out["persist_books"] = persist_books(book_rows, book_batch, folder / "books")
        out["persist_hour"] = persist_after_an_hour(hour_keys, total_keys // 3, batch_rows, folder / "hour")
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    # a fresh process, as each stage is: run_all's keyword arguments as JSON in, its result as JSON out
    print(json.dumps(run_all(**json.loads(sys.argv[1]))), flush=True)
