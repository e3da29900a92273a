"""The DuckDB file of persist: batched, deduplicated inserts and crash-safe seals into Parquet.

Tables (``DATA_DIR/collector.duckdb``, opened by persist alone):

    snapshots    the SPEC table: rows not yet sealed
    gaps         rows of the gap log (gap, disconnect, resync, lost, duplicate, out_of_order) not yet sealed
    stored_keys  the (hashed) key of every row stored in the last DEDUP_WINDOW_SECS (+ an archive interval),
                 sealed or not, of records that carry the exchange's event time: a reconnect repeat is
                 not stored again, even after its original left for the archive. Bounded in time on
                 purpose (exchanges restart ids).
    untimed_keys the same for records without an event time (Binance's depth20 books)
    persist_state    the write-ahead-log generation of the last insert
    stream_progress  how far each stream's record numbers got (``pipeline.losses``)

DuckDB writes no WAL of its own here (``RECOVERY_MODE no_wal_writes``): a commit reaches the file at
the next ``checkpoint``, and a crash before it rolls the file back to the checkpoint before. persist's
own write-ahead log keeps every message until a checkpoint covers it, and the generation stored with
each insert says where its replay starts, so nothing is lost. A commit then costs no serialization or
fsync, and each byte is written to the file once instead of twice (DuckDB's WAL, then its
checkpoint); DuckDB's automatic checkpoint, which stalled the COMMIT that triggered it for seconds,
never runs.

Dedup is an anti-join against the stored keys instead of a UNIQUE index: an index costs 3-4x on
insert and makes the seal's delete ~1000x slower than swapping a table. A repeat is the same exchange
message again, so it carries its original's event time, and its original was received after that
event (give or take the exchange's clock: ``_repeats_received_since``). The anti-join of a batch
therefore reads only the keys received since its oldest event time: DuckDB skips older row groups by
their min/max of ``seen_at``, and an insert costs what the batch holds, not what the window holds (a
full scan costs ~20 ns a stored key: at 5,000 records/s, two hours of keys are 36 M, ~0.7 s a batch).
Records without an event time are checked against all of ``untimed_keys``: few feeds, few records.

A seal is three steps, each safe to crash in:
  1. one transaction renames ``snapshots``/``gaps`` to ``sealing_*`` and creates empty ones, and a
     checkpoint makes it durable;
  2. each exchange/symbol's rows are written to ``outbox/<key>`` (temp name, fsync, rename); the
     key is a function of the rows, so writing again yields the same file, never a second copy;
  3. one transaction drops ``sealing_*``, and a checkpoint makes it durable.
A restart finds ``sealing_*`` still there after a crash in 2 or 3 and simply does 2 and 3 again.
"""
from __future__ import annotations

import datetime
import itertools
import os
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.crashpoints import crash_point
from pipeline.records import gap_event

SNAPSHOT_SCHEMA = pa.schema([
    ("exchange", pa.string()),
    ("symbol", pa.string()),
    ("data_type", pa.string()),
    ("exchange_sequence_id", pa.string()),
    ("timestamp_collector", pa.int64()),
    ("timestamp_exchange", pa.int64()),
    ("data", pa.string()),
])
SNAPSHOTS_DDL = """CREATE TABLE IF NOT EXISTS snapshots (
    exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL, data_type VARCHAR NOT NULL,
    exchange_sequence_id VARCHAR NOT NULL, timestamp_collector BIGINT NOT NULL,
    timestamp_exchange BIGINT, data VARCHAR NOT NULL)"""
GAP_FIELDS = tuple(gap_event("", "", "", "", 0, None))
GAPS_DDL = """CREATE TABLE IF NOT EXISTS gaps (
    kind VARCHAR NOT NULL, exchange VARCHAR NOT NULL, symbol VARCHAR NOT NULL, data_type VARCHAR NOT NULL,
    expected VARCHAR, received VARCHAR, missing BIGINT, start_time BIGINT NOT NULL, end_time BIGINT)"""
# A stored key is the 128-bit MD5 of the four key columns: each insert's anti-join then hashes one
# number a stored key instead of four strings (2.6x faster at 3M keys, measured), and a key takes 16
# bytes. MD5 for its width, not for secrecy: two different keys share a hash with odds of ~1e-22 among
# 200M keys. exchange and data_type are the adapters' own names, never holding NUL, and the
# symbol's length marks where it ends, so two different keys never hash the same text.
KEY_HASH = "md5_number(concat_ws(chr(0), exchange, data_type, length(symbol), symbol, exchange_sequence_id))"
KEYS_DDL = "CREATE TABLE IF NOT EXISTS stored_keys (key UHUGEINT, seen_at BIGINT)"
UNTIMED_KEYS_DDL = "CREATE TABLE IF NOT EXISTS untimed_keys (key UHUGEINT, seen_at BIGINT)"
KEY_TABLES = ("stored_keys", "untimed_keys")
# How far an exchange's clock may move against ours between an original and its repeat, the repeat still
# caught. A steady skew costs nothing: each batch shows it (event times after receipt) and the bound moves
# back by as much. NTP keeps the clocks within milliseconds; a repeat missed stores a row twice, no loss.
EXCHANGE_CLOCK_SLACK_SECS = 10
STATE_DDL = "CREATE TABLE IF NOT EXISTS persist_state (name VARCHAR PRIMARY KEY, value BIGINT)"
PROGRESS_SCHEMA = pa.schema([
    ("exchange", pa.string()), ("symbol", pa.string()), ("data_type", pa.string()), ("epoch", pa.string()),
    ("number", pa.int64()), ("received_at", pa.int64()), ("record_id", pa.string()),
])
PROGRESS_DDL = """CREATE TABLE IF NOT EXISTS stream_progress (
    exchange VARCHAR, symbol VARCHAR, data_type VARCHAR, epoch VARCHAR, number BIGINT, received_at BIGINT, record_id VARCHAR)"""
# A checkpoint rewrites the table's last, partly filled row group: at DuckDB's default (122,880 rows,
# ~170 MB of books) every few checkpoints took 3-6 s. Small row groups keep each checkpoint short, and
# inserts ran 1.4x (books) to 1.5x (trades) faster (measured); unsealed rows are only scanned by the seal.
ROW_GROUP_SIZE = 8192
MAX_INT64 = 2**63 - 1
RELEASED_MEMORY_LIMIT = "16MB"  # what DuckDB keeps cached after a checkpoint


class StoreLocked(Exception):
    """Another process holds the DuckDB file."""


def archive_key(exchange: str, symbol: str, server: str, first_timestamp_us: int, prefix: str = "", suffix: str = "") -> str:
    """``{exchange}/{symbol}/{server}/{YYYY-MM-DD}/{timestamp}.parquet``; the server level only when set."""
    day = datetime.datetime.fromtimestamp(first_timestamp_us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%d")
    parts = [prefix, _safe(exchange), _safe(symbol), _safe(server), day, f"{first_timestamp_us}{suffix}.parquet"]
    return "/".join(part for part in parts if part)


def _safe(name: str) -> str:
    return name.replace("/", "-").replace("\\", "-").replace("..", "-")


def batch_from_wire(rows: list[list], data: bytes | memoryview) -> pa.RecordBatch:
    """An Arrow batch of the SPEC columns from one wire message, without copying records one by one."""
    columns = list(zip(*rows))
    offsets = pa.array(itertools.accumulate(columns[10], initial=0), pa.int32())
    data_column = pa.StringArray.from_buffers(len(rows), offsets.buffers()[1], pa.py_buffer(data))
    data_column.validate(full=True)  # raw JSON must be UTF-8; a broken peer must not poison the table
    return pa.RecordBatch.from_arrays(
        [pa.array(columns[i], pa.string()) for i in range(4)]
        + [pa.array(columns[4], pa.int64()), pa.array(columns[5], pa.int64()), data_column],
        schema=SNAPSHOT_SCHEMA,
    )


class Store:
    def __init__(self, path: Path, memory_limit: str = "1GB", dedup_window_secs: float = 3600.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect()
            self.con.execute(f"ATTACH {_literal(str(path))} AS store (RECOVERY_MODE no_wal_writes, ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
            self.con.execute("USE store")
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(f"{path} is locked by another process: {str(exc).splitlines()[0]}") from None
            raise
        self.memory_limit = memory_limit
        self.con.execute(f"SET memory_limit = {_literal(memory_limit)}")
        # where DuckDB spills (a large seal's sort); opened through ATTACH, it would use ./.tmp
        self.con.execute(f"SET temp_directory = {_literal(f'{path}.tmp')}")
        self.con.execute("SET preserve_insertion_order = false")
        self.dedup_window_us = int(dedup_window_secs * 1e6)
        self._hash_stored_keys()
        for ddl in (SNAPSHOTS_DDL, GAPS_DDL, KEYS_DDL, UNTIMED_KEYS_DDL, STATE_DDL, PROGRESS_DDL):
            self.con.execute(ddl)

    def _hash_stored_keys(self) -> None:
        """A file written before keys were hashed keeps its dedup memory: its keys are hashed once, here,
        into ``untimed_keys`` (it never knew their event times), which every insert checks whole."""
        columns = {row[0] for row in self.con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'stored_keys'").fetchall()}
        if "exchange_sequence_id" not in columns:
            return
        self.con.execute("BEGIN TRANSACTION")
        self.con.execute(f"CREATE TABLE untimed_keys AS SELECT {KEY_HASH}::UHUGEINT AS key, seen_at FROM stored_keys")
        self.con.execute("DROP TABLE stored_keys")
        self.con.execute("COMMIT")
        self.checkpoint()

    def _scalar(self, sql: str, params: list | None = None):
        """One value, reading the whole result (DuckDB keeps a half-read result open and busy)."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None

    def close(self) -> None:
        self.checkpoint()
        self.con.close()

    def checkpoint(self) -> None:
        """Writes every committed change to the database file: only from here on does a crash keep it.
        Then DuckDB lets go of its cache of what it wrote."""
        self.con.execute("CHECKPOINT")
        self._release_cached_blocks()

    def _release_cached_blocks(self) -> None:
        # DuckDB keeps every block it wrote cached until memory_limit is reached, so persist's memory
        # would grow with the unsealed rows. Only the seal reads those rows again, and the dedup reads
        # stored_keys from the OS page cache: re-reading costs nothing measurable (benchmarks). Lowering
        # the limit is how DuckDB is told to evict (duckdb/duckdb#5455).
        try:
            self.con.execute(f"SET memory_limit = {_literal(RELEASED_MEMORY_LIMIT)}")
        except duckdb.OutOfMemoryException:
            pass  # pinned blocks in use: it evicted what it could
        finally:
            self.con.execute(f"SET memory_limit = {_literal(self.memory_limit)}")

    def committed_generation(self) -> int:
        """The write-ahead-log generation whose messages the last insert committed (0: none)."""
        return self._scalar("SELECT value FROM persist_state WHERE name = 'wal_generation'") or 0

    def stream_progress(self) -> list[tuple]:
        """What the last insert stored of ``pipeline.losses.LossTracker.rows``, oldest first."""
        return self.con.execute("SELECT * FROM stream_progress ORDER BY received_at").fetchall()

    def insert(self, table: pa.Table | None, events: list[dict], wal_generation: int,
               progress: list[tuple] | None = None) -> int:
        """Stores, in one transaction, the records whose key was not stored before, the gap rows, the
        write-ahead-log generation they came from and, when given, how far each stream's numbers got
        (``stream_progress``); returns how many records were new."""
        con = self.con
        inserted = 0
        if table is not None:
            # Dedup looks at the key columns only; the raw JSON (kilobytes a book) is copied once, at the insert.
            keys = table.select(["exchange", "symbol", "data_type", "exchange_sequence_id", "timestamp_collector",
                                 "timestamp_exchange"])
            con.register("incoming_keys", keys.append_column("row_index", pa.array(range(table.num_rows), pa.int64())))
        try:
            con.execute("BEGIN TRANSACTION")
            if table is not None:
                # the first of each key in the batch (earliest receipt), unless the window holds it already
                since = self._repeats_received_since()
                con.execute(f"""
                    CREATE OR REPLACE TEMP TABLE fresh_keys AS
                    WITH firsts AS (SELECT {KEY_HASH} AS key, min(timestamp_collector) AS seen_at,
                                           arg_min(row_index, (timestamp_collector, row_index)) AS row_index,
                                           bool_or(timestamp_exchange IS NOT NULL) AS timed
                                    FROM incoming_keys GROUP BY ALL)
                    SELECT * FROM firsts
                    ANTI JOIN untimed_keys USING (key)
                    ANTI JOIN (SELECT key FROM stored_keys WHERE seen_at >= {int(since)}) USING (key)""")
                chosen = con.sql("SELECT row_index FROM fresh_keys ORDER BY row_index").to_arrow_table()
                fresh = table if chosen.num_rows == table.num_rows else table.take(chosen.column(0))
                inserted = fresh.num_rows
                if inserted:
                    con.register("fresh", fresh)
                    con.execute("INSERT INTO snapshots SELECT * FROM fresh")
                    con.execute("INSERT INTO stored_keys SELECT key, seen_at FROM fresh_keys WHERE timed")
                    con.execute("INSERT INTO untimed_keys SELECT key, seen_at FROM fresh_keys WHERE NOT timed")
                    con.unregister("fresh")
                con.execute("DROP TABLE fresh_keys")
            if events:
                rows = [tuple(event.get(field) for field in GAP_FIELDS) for event in events]
                con.executemany(f"INSERT INTO gaps VALUES ({', '.join('?' * len(GAP_FIELDS))})", rows)
            con.execute("INSERT OR REPLACE INTO persist_state VALUES ('wal_generation', ?)", [wal_generation])
            if progress is not None:
                con.execute("DELETE FROM stream_progress")
                con.register("progress", pa.Table.from_pylist(
                    [dict(zip(PROGRESS_SCHEMA.names, row)) for row in progress], schema=PROGRESS_SCHEMA))
                con.execute("INSERT INTO stream_progress SELECT * FROM progress")
                con.unregister("progress")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            if table is not None:
                con.unregister("incoming_keys")
        return inserted

    def _repeats_received_since(self) -> int:
        """The earliest receipt time an original of a record in ``incoming_keys`` can have: its event
        time, earlier by how far the exchange's clock runs ahead of ours in this batch, and the slack."""
        oldest, ahead = self.con.execute(
            "SELECT min(least(timestamp_exchange, timestamp_collector)),"
            " max(timestamp_exchange::HUGEINT - timestamp_collector) FROM incoming_keys").fetchall()[0]
        if oldest is None:
            return MAX_INT64
        since = oldest - max(ahead or 0, 0) - EXCHANGE_CLOCK_SLACK_SECS * 1_000_000
        return max(since, -MAX_INT64)

    def pending_rows(self) -> int:
        return self._scalar("SELECT count(*) FROM snapshots")

    # -- sealing
    def _has_sealing(self) -> bool:
        names = {row[0] for row in self.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        return "sealing_snapshots" in names

    def seal(self, outbox: Path, server: str, archive_interval_secs: float) -> list[Path]:
        """Moves every stored row into outbox Parquet files; returns the files written. Ends with a
        checkpoint, rows to seal or not: every insert before it is then durable."""
        files = self.recover(outbox, server)
        if self._scalar("SELECT (SELECT count(*) FROM snapshots) + (SELECT count(*) FROM gaps)"):
            files += self._seal_stored_rows(outbox, server, archive_interval_secs)
        self.checkpoint()
        return files

    def _seal_stored_rows(self, outbox: Path, server: str, archive_interval_secs: float) -> list[Path]:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        con.execute("ALTER TABLE snapshots RENAME TO sealing_snapshots")
        con.execute("ALTER TABLE gaps RENAME TO sealing_gaps")
        con.execute(SNAPSHOTS_DDL)
        con.execute(GAPS_DDL)
        con.execute("COMMIT")
        self.checkpoint()
        crash_point("seal.after_rename")
        files = self._write_and_drop_sealing(outbox, server)
        cutoff = self._scalar("SELECT greatest((SELECT max(seen_at) FROM stored_keys), (SELECT max(seen_at) FROM untimed_keys))")
        if cutoff is not None:
            horizon = cutoff - self.dedup_window_us - int(archive_interval_secs * 1e6)
            for name in KEY_TABLES:
                con.execute(f"DELETE FROM {name} WHERE seen_at < ?", [horizon])
        return files

    def recover(self, outbox: Path, server: str) -> list[Path]:
        """Finishes a seal that a crash interrupted, and checkpoints; a no-op otherwise."""
        if not self._has_sealing():
            return []
        files = self._write_and_drop_sealing(outbox, server)
        self.checkpoint()
        return files

    def _write_and_drop_sealing(self, outbox: Path, server: str) -> list[Path]:
        con = self.con
        files = []
        groups = con.execute(
            "SELECT exchange, symbol, min(timestamp_collector) FROM sealing_snapshots GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        for exchange, symbol, first in groups:
            target = outbox / archive_key(exchange, symbol, server, first)
            query = (f"SELECT * FROM sealing_snapshots WHERE exchange = {_literal(exchange)} AND symbol = {_literal(symbol)}"
                     " ORDER BY data_type, timestamp_collector, exchange_sequence_id")
            files.append(_write_parquet(con, query, target))
            crash_point("seal.after_file")
        gap_groups = con.execute(
            "SELECT exchange, symbol, min(start_time), max(coalesce(end_time, start_time)) FROM sealing_gaps GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        for exchange, symbol, first, last in gap_groups:
            target = outbox / archive_key(exchange, symbol, server, first, prefix="gaps", suffix=f"-{last}")
            query = (f"SELECT * FROM sealing_gaps WHERE exchange = {_literal(exchange)} AND symbol = {_literal(symbol)}"
                     " ORDER BY start_time, kind, data_type")
            files.append(_write_parquet(con, query, target))
        crash_point("seal.before_drop")
        con.execute("BEGIN TRANSACTION")
        con.execute("DROP TABLE sealing_snapshots")
        con.execute("DROP TABLE sealing_gaps")
        con.execute("COMMIT")
        return files


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _write_parquet(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> Path:
    """COPY to a temporary name, fsync, rename, fsync the folder: the file is whole before it is visible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    con.execute(f"COPY ({query}) TO {_literal(str(temporary))} (FORMAT parquet, COMPRESSION zstd)")
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target
