"""Order-book replay from the archive: the book of one stream at chosen times.

    from pipeline.books import replay
    table = replay("./archive", "okx", "BTC-USDT", "2026-11-25T14:00:00Z", "2026-11-25T15:00:00Z", every_us=1_000_000)

One row per sample time: ``timestamp`` (μs), ``exchange``, ``symbol``, ``bid_price_0..N-1``,
``bid_size_0..N-1``, ``ask_price_0..N-1``, ``ask_size_0..N-1`` (DOUBLE, best first, NULL where the
book has fewer levels), ``exchange_sequence_id`` (of the last message applied to the current book;
NULL when there is none) and ``valid``. The book at time t is every message received
(``timestamp_collector``) at or before t, applied in exchange order.

Order. Delta feeds with numeric update ids (OKX ``books`` seqId, Bybit ``u``) are read in id order,
so a message stored out of order is applied where the exchange put it; a message takes effect at
the latest receipt time of everything before it in that order (the book waits for a late link, as
the live book would have). An id that goes back at a snapshot (Bybit's ``u`` restarts at 1 after a
service restart) begins a new epoch read after the old one. Every other stream is read in receipt
order (``timestamp_collector``); a whole-book message older (by id) than the book it would replace
is stale and skipped (Binance depth20), so a snapshot feed's book is its newest snapshot.

Validity: the book is unknown (``valid`` false, every level NULL) -
  * before the first snapshot (reading starts at the last snapshot at or before the first sample);
  * from ``start_time`` to ``end_time`` of every ``gaps`` row of kind ``resync``, ``disconnect``,
    ``gap`` or ``lost`` for this stream's order book; at ``start_time`` the book is also dropped, so on a delta
    feed it stays unknown until the next snapshot (what was missed is never learned from deltas);
  * after a broken chain the archive itself shows (OKX ``prevSeqId`` differs from the last
    ``seqId``, Bybit ``u`` is not the last + 1) or a row that cannot be decoded, until the next
    snapshot;
  * after an exchange checksum mismatch (OKX ``books``: verified on every message, snapshot or
    delta) until the next snapshot. Mismatches are logged and counted.

The table's schema metadata holds counts: ``checksum_failures``, ``chain_breaks``,
``decode_errors``, ``stale_skipped``, ``messages``, ``snapshots``.

DuckDB filters, orders and streams the rows (record batches, never the whole archive in memory);
the book itself is ``pipeline.orderbook.Book``.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import pyarrow as pa
from loguru import logger

from pipeline import archive_views
from pipeline.checksum import OKX_DEPTH, okx_checksum
from pipeline.exchanges.base import SNAPSHOT_ID_SUFFIX
from pipeline.orderbook import SNAPSHOT, Book, BookDecodeError, decode

INVALIDATING_KINDS = ("resync", "disconnect", "gap", "lost")
# the update id of a stored book row (a snapshot's id is "<update id>:snapshot")
NUMERIC_ID = f"TRY_CAST(split_part(exchange_sequence_id, '{SNAPSHOT_ID_SUFFIX}', 1) AS BIGINT)"
SEQ_ORDERED = ("okx", "bybit")  # delta feeds whose numeric update ids give the exchange's order
SNAPSHOT_LOOKBACK_US = 3_600_000_000  # first window searched back for the starting snapshot (grows 4x)
BATCH_ROWS = 2048  # archive rows per record batch read
ROWS_PER_BATCH = 65_536  # sample rows per Arrow batch built
MAX_SAMPLES = 10_000_000
MAX_DEPTH = 1000
WARNINGS_LOGGED = 10  # individual warnings per kind; the rest are only counted
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def to_us(value: int | str | datetime.datetime) -> int:
    """μs since the epoch from an integer (μs), a digit string (μs), an ISO-8601 text
    (``2026-11-25T14:00:00Z``, ``2026-11-25 14:00:00.5+01:00``, ``2026-11-25``; naive means UTC)
    or a datetime."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        text = str(value).strip()
        if text.isascii() and text.isdigit():
            return int(text)
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a time: {str(value)!r} (give ISO-8601 like 2026-11-25T14:00:00Z, "
                             "or integer microseconds since the epoch)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def column_names(depth: int) -> list[str]:
    return (["timestamp", "exchange", "symbol"]
            + [f"bid_price_{i}" for i in range(depth)] + [f"bid_size_{i}" for i in range(depth)]
            + [f"ask_price_{i}" for i in range(depth)] + [f"ask_size_{i}" for i in range(depth)]
            + ["exchange_sequence_id", "valid"])


def schema(depth: int, metadata: dict | None = None) -> pa.Schema:
    fields = [pa.field("timestamp", pa.int64()), pa.field("exchange", pa.string()), pa.field("symbol", pa.string())]
    fields += [pa.field(name, pa.float64()) for name in column_names(depth)[3:-2]]
    fields += [pa.field("exchange_sequence_id", pa.string()), pa.field("valid", pa.bool_())]
    return pa.schema(fields, metadata=metadata)


@dataclasses.dataclass
class Stats:
    messages: int = 0
    snapshots: int = 0
    checksum_failures: int = 0
    chain_breaks: int = 0
    decode_errors: int = 0
    stale_skipped: int = 0

    def metadata(self) -> dict[bytes, bytes]:
        return {field.name.encode(): str(getattr(self, field.name)).encode() for field in dataclasses.fields(self)}


class _Unknown:
    """The intervals where the gaps table says the book is unknown: [start, end), merged; queried
    with non-decreasing times."""

    def __init__(self, rows: Sequence[tuple[int, int | None]]):
        merged: list[list[int]] = []
        for start, end in sorted((s, e) for s, e in rows if e is not None and e > s):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.intervals = merged
        self._i = 0

    def covers(self, t: int) -> bool:
        intervals = self.intervals
        while self._i < len(intervals) and intervals[self._i][1] <= t:
            self._i += 1
        return self._i < len(intervals) and intervals[self._i][0] <= t


def _connection(con_or_archive: duckdb.DuckDBPyConnection | str | os.PathLike) -> duckdb.DuckDBPyConnection:
    if isinstance(con_or_archive, duckdb.DuckDBPyConnection):
        return con_or_archive
    text = os.fspath(con_or_archive)
    if text.startswith("s3://"):
        return archive_views.connect(bucket=text[len("s3://"):].strip("/"))
    if not Path(text).exists():
        raise ValueError(f"no archive at {text}")
    return archive_views.connect(archive_url=text)


def _stored_symbol(exchange: str, symbol: str) -> str:
    """The exchange's own symbol form, as the archive stores it (BTC/USDT -> btcusdt on Binance)."""
    from pipeline.exchanges import REGISTRY

    try:
        return REGISTRY[exchange].normalize_symbol(symbol)
    except Exception:  # noqa: BLE001 - an unusual spelling is looked up as given
        return symbol


_STREAM = "exchange = $exchange AND symbol = $symbol AND data_type = 'orderbook'"


def _first_read_time(con: duckdb.DuckDBPyConnection, params: dict, first_sample: int) -> int:
    """The receipt time of the last whole-book message at or before the first sample (the book
    cannot be known from earlier rows), or the first sample when there is none. Searched in growing
    windows backwards, so a long archive is not scanned for a recent snapshot."""
    whole = archive_views.BOOK_FIELDS[params["exchange"]][4]
    (oldest,) = con.execute(f"SELECT min(timestamp_collector) FROM snapshots WHERE {_STREAM} AND timestamp_collector <= $t",
                            {**params, "t": first_sample}).fetchone()
    if oldest is None:
        return first_sample
    window = SNAPSHOT_LOOKBACK_US
    while True:
        low = first_sample - window
        (found,) = con.execute(
            f"SELECT max(timestamp_collector) FROM snapshots WHERE {_STREAM} AND timestamp_collector BETWEEN $low AND $t AND {whole}",
            {**params, "low": low, "t": first_sample}).fetchone()
        if found is not None:
            return found
        if low <= oldest:
            return first_sample
        window *= 4


def _unknown_rows(con: duckdb.DuckDBPyConnection, params: dict, low: int, high: int) -> list[tuple[int, int | None]]:
    kinds = ", ".join(f"'{kind}'" for kind in INVALIDATING_KINDS)
    return con.execute(
        f"SELECT start_time, end_time FROM gaps WHERE {_STREAM} AND kind IN ({kinds}) "
        "AND start_time <= $high AND (end_time IS NULL OR end_time >= $low) ORDER BY start_time",
        {**params, "low": low, "high": high}).fetchall()


def _ordered_by_id(con: duckdb.DuckDBPyConnection, params: dict, low: int, high: int) -> bool:
    if params["exchange"] not in SEQ_ORDERED:
        return False
    total, numeric = con.execute(
        f"SELECT count(*), count({NUMERIC_ID}) FROM snapshots WHERE {_STREAM} "
        "AND timestamp_collector BETWEEN $low AND $high", {**params, "low": low, "high": high}).fetchone()
    return total > 0 and total == numeric


def _rows(con: duckdb.DuckDBPyConnection, params: dict, low: int, high: int, by_id: bool) -> Iterator[tuple[str, int, str]]:
    """(exchange_sequence_id, timestamp_collector, data) of the stream's book rows in exchange order."""
    where = f"{_STREAM} AND timestamp_collector BETWEEN $low AND $high"
    if by_id:
        whole = archive_views.BOOK_FIELDS[params["exchange"]][4]
        sql = f"""
            WITH r AS (SELECT exchange_sequence_id AS id, timestamp_collector AS tc, data,
                              {NUMERIC_ID} AS seq
                       FROM snapshots WHERE {where}),
                 m AS (SELECT *, max(seq) OVER (ORDER BY tc, seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
                       FROM r),
                 e AS (SELECT *, sum(CASE WHEN seq < before AND ({whole}) THEN 1 ELSE 0 END)
                                     OVER (ORDER BY tc, seq ROWS UNBOUNDED PRECEDING) AS epoch
                       FROM m)
            SELECT id, tc, data FROM e ORDER BY epoch, seq, tc"""
    else:
        sql = (f"SELECT exchange_sequence_id, timestamp_collector, data FROM snapshots WHERE {where} "
               f"ORDER BY timestamp_collector, {NUMERIC_ID} NULLS LAST, exchange_sequence_id")
    relation = con.sql(sql, params={**params, "low": low, "high": high})
    reader = relation.to_arrow_reader(BATCH_ROWS) if hasattr(relation, "to_arrow_reader") else relation.fetch_record_batch(BATCH_ROWS)
    for batch in reader:
        yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), batch.column(2).to_pylist())


class _Replayer:
    """The book of one stream, fed messages in exchange order; answers samples in time order."""

    def __init__(self, exchange: str, symbol: str, depth: int, verify_checksum: bool, by_id: bool, unknown: _Unknown):
        self.exchange, self.symbol, self.depth = exchange, symbol, depth
        self.verify_checksum, self.by_id, self.unknown = verify_checksum, by_id, unknown
        self.book: Book | None = None
        self.last_seq: int | None = None  # update id of the last message applied to the book
        self.last_id: str | None = None  # exchange_sequence_id of the last message applied to the book
        self.stats = Stats()
        self.rows: list[list] = []  # samples not yet in a batch
        self.batches: list[pa.RecordBatch] = []
        self._version = 0  # bumped on every change of the book
        self._cached: tuple[int, list] | None = None

    def _warn(self, count: int, text: str) -> None:
        if count <= WARNINGS_LOGGED:
            logger.warning(f"book {self.exchange} {self.symbol}: {text}")

    def drop(self) -> None:
        self.book = None
        self.last_seq = self.last_id = None
        self._version += 1

    def apply(self, row_id: str, received: int, data: str) -> None:
        stats = self.stats
        stats.messages += 1
        try:
            message = decode(self.exchange, data)
            if message.kind == SNAPSHOT:
                if (not self.by_id and self.book is not None and message.seq is not None and self.last_seq is not None
                        and message.seq < self.last_seq):
                    stats.stale_skipped += 1
                    return
                book = Book.from_snapshot(message.bids, message.asks)
                stats.snapshots += 1
            else:
                book = self.book
                if book is None:
                    return  # a delta on an unknown book tells nothing
                if message.prev is not None and self.last_seq is not None and message.prev != self.last_seq:
                    stats.chain_breaks += 1
                    self._warn(stats.chain_breaks, f"chain broken at {row_id} (follows {message.prev}, "
                                                   f"last applied {self.last_seq}); unknown until the next snapshot")
                    self.drop()
                    return
                book.apply_delta(message.bids, message.asks)
        except (BookDecodeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            stats.decode_errors += 1
            self._warn(stats.decode_errors, f"row {row_id} at {received} cannot be read ({exc}); unknown until the next snapshot")
            self.drop()
            return
        self.book, self.last_seq, self.last_id = book, message.seq, row_id
        self._version += 1
        if self.verify_checksum and message.checksum is not None:
            computed = okx_checksum(*book.top(OKX_DEPTH))
            if computed != message.checksum:
                stats.checksum_failures += 1
                self._warn(stats.checksum_failures, f"checksum mismatch at {row_id} (received {received}): "
                                                    f"exchange {message.checksum}, book {computed}; unknown until the next snapshot")
                self.drop()

    def sample(self, t: int) -> None:
        book = self.book
        if book is None or self.unknown.covers(t):
            self.rows.append([t, self.last_id if book is not None else None, False, None])
            return
        if self._cached is None or self._cached[0] != self._version:
            depth = self.depth
            bids, asks = book.top(depth)
            pad = [None] * depth
            levels = ([float(p) for p, _ in bids] + pad[len(bids):] + [float(s) for _, s in bids] + pad[len(bids):]
                      + [float(p) for p, _ in asks] + pad[len(asks):] + [float(s) for _, s in asks] + pad[len(asks):])
            self._cached = (self._version, levels)
        self.rows.append([t, self.last_id, True, self._cached[1]])
        if len(self.rows) >= ROWS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        """The buffered sample rows as one Arrow batch (Python objects live for one batch only)."""
        depth, n = self.depth, len(self.rows)
        null_levels = [None] * (4 * depth)
        times, ids, valid, levels = [], [], [], []
        for t, row_id, ok, values in self.rows:
            times.append(t)
            ids.append(row_id)
            valid.append(ok)
            levels.append(values if values is not None else null_levels)
        level_columns = list(zip(*levels)) if levels else [()] * (4 * depth)
        arrays = [pa.array(times, pa.int64()), pa.array([self.exchange] * n, pa.string()), pa.array([self.symbol] * n, pa.string())]
        arrays += [pa.array(column, pa.float64()) for column in level_columns]
        arrays += [pa.array(ids, pa.string()), pa.array(valid, pa.bool_())]
        self.batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema(depth)))
        self.rows = []

    def table(self) -> pa.Table:
        if self.rows or not self.batches:
            self._flush()
        return pa.Table.from_batches(self.batches).replace_schema_metadata(self.stats.metadata())


def replay(con_or_archive: duckdb.DuckDBPyConnection | str | os.PathLike, exchange: str, symbol: str,
           start_us: int | str | datetime.datetime | None = None, end_us: int | str | datetime.datetime | None = None,
           every_us: int | None = None, at_us: int | str | datetime.datetime | None = None, depth: int = 10,
           verify_checksum: bool = True) -> pa.Table:
    """The order book of ``exchange``/``symbol`` sampled from the archive.

    ``con_or_archive``: a connection with the archive views (``pipeline.archive_views.connect``), a
    local archive folder, or ``s3://bucket``. Samples: every ``every_us`` μs from ``start_us`` to
    ``end_us`` (both included), or the one time ``at_us``, or - with neither - one row after each
    message received between ``start_us`` and ``end_us``. Times are μs or ISO-8601 texts.
    """
    exchange = exchange.strip().lower()
    if exchange not in archive_views.BOOK_FIELDS:
        raise ValueError(f"unknown exchange {exchange!r}; one of {', '.join(archive_views.BOOK_FIELDS)}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {depth}")
    if every_us is not None and at_us is not None:
        raise ValueError("give every_us or at_us, not both")
    start = to_us(start_us) if start_us is not None else None
    end = to_us(end_us) if end_us is not None else None
    if at_us is not None:
        at = to_us(at_us)
        samples: Iterator[int] | None = iter((at,))
        first, last = at, at
    else:
        if start is None or end is None:
            raise ValueError("give start_us and end_us (or at_us)")
        if start > end:
            raise ValueError(f"start ({start}) is after end ({end})")
        first, last = start, end
        if every_us is not None:
            every_us = int(every_us)
            if every_us < 1:
                raise ValueError(f"every_us must be at least 1, got {every_us}")
            if (end - start) // every_us + 1 > MAX_SAMPLES:
                raise ValueError(f"{(end - start) // every_us + 1} samples requested; at most {MAX_SAMPLES} (sample less often)")
            samples = iter(range(start, end + 1, every_us))
        else:
            samples = None  # one row per message
    con = _connection(con_or_archive)
    params = {"exchange": exchange, "symbol": _stored_symbol(exchange, symbol)}
    low = _first_read_time(con, params, first)
    by_id = _ordered_by_id(con, params, low, last)
    unknown_rows = _unknown_rows(con, params, low, last)
    replayer = _Replayer(exchange, params["symbol"], depth, verify_checksum, by_id, _Unknown(unknown_rows))
    drops = iter(sorted(start_time for start_time, _ in unknown_rows))

    next_sample = next(samples, None) if samples is not None else None
    next_drop = next(drops, None)
    effective = None  # a message takes effect at the latest receipt time of all before it

    def advance(until: int | None) -> None:
        """Samples and drops before ``until`` (the next message's time), in time order. At one
        time: messages, then the drop, then samples. (A ``gap`` row starts at the last good
        message, a ``resync`` row at the first bad one: applying either before dropping is right.)"""
        nonlocal next_sample, next_drop
        while True:
            if next_drop is not None and (until is None or next_drop < until) and (next_sample is None or next_drop <= next_sample):
                replayer.drop()
                next_drop = next(drops, None)
            elif next_sample is not None and (until is None or next_sample < until):
                replayer.sample(next_sample)
                next_sample = next(samples, None)
            else:
                return

    for row_id, received, data in _rows(con, params, low, last, by_id):
        effective = received if effective is None or received > effective else effective
        advance(effective)
        replayer.apply(row_id, effective, data)
        if samples is None and first <= effective <= last:
            replayer.sample(effective)
    advance(None)

    stats = replayer.stats
    if stats.checksum_failures:
        logger.warning(f"book {exchange} {params['symbol']}: {stats.checksum_failures} checksum mismatch(es) "
                       f"in {stats.messages} messages; the book is marked unknown after each until the next snapshot")
    return replayer.table()
