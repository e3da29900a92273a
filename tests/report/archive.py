"""Test archives in the archive's own layout, built from the recorded fixture frames with known faults.

Records come from real frames parsed by the real adapters; only their times are moved into one
window (keeping each recording's own spacing) so five recordings from different years make one
report period. Data files: ``{exchange}/{symbol}/{YYYY-MM-DD}/{first ts}.parquet``; gap log:
``gaps/{exchange}/{symbol}/{YYYY-MM-DD}/{first}-{last}.parquet``, with the columns of
``pipeline.storage``.
"""
from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import exchanges
from pipeline.records import gap_event
from pipeline.storage import GAP_FIELDS, SNAPSHOT_SCHEMA
from tests.conftest import fixture_lines

GAP_SCHEMA = pa.schema([(f, pa.int64() if f in ("missing", "start_time", "end_time") else pa.string()) for f in GAP_FIELDS])


@dataclasses.dataclass
class Row:
    exchange: str
    symbol: str
    data_type: str
    exchange_sequence_id: str
    timestamp_collector: int
    timestamp_exchange: int | None
    data: str


def fixture_rows(exchange: str, relative: str, symbol: str, data_type: str, base_us: int, t0_us: int) -> list[Row]:
    """The records of one stream of a fixture file, times moved so that exchange time ``t0_us`` is ``base_us``.

    Latency (collector - exchange time) is 20-80 ms, varying per record; records without an exchange
    time are received 1 ms after the one before.
    """
    adapter = exchanges.get(exchange)
    rows: list[Row] = []
    for line in fixture_lines(f"{exchange}/{relative}"):
        for record in adapter.parse(line).records:
            if record.symbol != symbol or record.data_type != data_type:
                continue
            i = len(rows)
            if record.timestamp_exchange is None:
                exchange_time = None
                collected = (rows[-1].timestamp_collector if rows else base_us) + 1000
            else:
                exchange_time = base_us + record.timestamp_exchange - t0_us
                collected = exchange_time + 20_000 + (i * 7919) % 60_000
            rows.append(Row(exchange, symbol, data_type, record.exchange_sequence_id, collected, exchange_time, record.data.decode()))
    assert rows, f"no {data_type} records of {symbol} in {exchange}/{relative}"
    return rows


def first_exchange_time(exchange: str, relative: str) -> int:
    adapter = exchanges.get(exchange)
    for line in fixture_lines(f"{exchange}/{relative}"):
        for record in adapter.parse(line).records:
            if record.timestamp_exchange is not None:
                return record.timestamp_exchange
    raise AssertionError(f"no exchange time in {exchange}/{relative}")


def event(kind: str, row: Row, start: int, end: int, missing: int | None = None, expected: str | None = None,
          received: str | None = None) -> dict:
    return gap_event(kind, row.exchange, row.symbol, row.data_type, start, end, expected=expected, received=received, missing=missing)


def day(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%d")


def write_archive(root: Path, rows: list[Row], events: list[dict]) -> list[Path]:
    """One data file per exchange/symbol/day (as persist seals), one gap-log file per exchange/symbol."""
    written = []
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.exchange, row.symbol, day(row.timestamp_collector)), []).append(row)
    for (exchange, symbol, when), members in groups.items():
        members.sort(key=lambda r: (r.data_type, r.timestamp_collector, r.exchange_sequence_id))
        first = min(r.timestamp_collector for r in members)
        path = root / exchange / symbol / when / f"{first}.parquet"
        table = pa.Table.from_pylist([dataclasses.asdict(r) for r in members], schema=SNAPSHOT_SCHEMA)
        written.append(_write(table, path))
    by_stream: dict[tuple[str, str], list[dict]] = {}
    for e in events:
        by_stream.setdefault((e["exchange"], e["symbol"]), []).append(e)
    for (exchange, symbol), members in by_stream.items():
        first = min(e["start_time"] for e in members)
        last = max(e["end_time"] or e["start_time"] for e in members)
        path = root / "gaps" / exchange / symbol / day(first) / f"{first}-{last}.parquet"
        written.append(_write(pa.Table.from_pylist(members, schema=GAP_SCHEMA), path))
    return written


def _write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path


# 2024-08-08T23:59:40Z: the streams run across midnight, so the archive holds two days
BASE_US = 1_723_161_580_000_000
UPBIT_BOOK_SHIFT_US = 65_000_000  # upbit KRW-LAMB's book stops for > 60 s (its feed's cadence): a silence

STREAMS = [  # exchange, fixture file, symbol, data type
    ("binance", "trade.jsonl", "btcusdt", "trade"),
    ("binance", "trade.jsonl", "ethusdt", "trade"),
    ("coinbase", "matches.jsonl", "SKL-USD", "trade"),
    ("coinbase", "level2.jsonl", "SKL-USD", "orderbook"),
    ("okx", "books.jsonl", "BTC-USDT", "orderbook"),
    ("bybit", "orderbook.200.jsonl", "BTCUSDT", "orderbook"),
    ("bybit", "publicTrade.jsonl", "BTCUSDT", "trade"),
    ("upbit", "orderbook.jsonl", "KRW-LAMB", "orderbook"),
    ("upbit", "trade.jsonl", "KRW-LAMB", "trade"),
]


def scenario() -> tuple[list[Row], list[dict]]:
    """The records of nine real streams of five exchanges, with faults injected, and the gap log they imply.

    binance btcusdt trade: ids 100-104 dropped (a gap of 5), 200-239 lost in an outage, 3 duplicates and
    2 out-of-order seen by check; binance ethusdt trade: 4 duplicates; coinbase SKL-USD trade: 2 ids
    dropped; okx BTC-USDT book: a broken chain (gap of unknown size) and a book-unknown interval;
    upbit KRW-LAMB book: silent for 65 s; the bybit streams and upbit trades: nothing wrong.
    """
    t0 = {}
    for exchange, relative, _, _ in STREAMS:
        t0[exchange] = min(t0.get(exchange, 1 << 62), first_exchange_time(exchange, relative))
    streams = {(e, s, d): fixture_rows(e, f, s, d, BASE_US, t0[e]) for e, f, s, d in STREAMS}
    events: list[dict] = []

    btc = streams[("binance", "btcusdt", "trade")]
    events.append(event("gap", btc[99], btc[99].timestamp_collector, btc[105].timestamp_collector, missing=5,
                        expected=btc[100].exchange_sequence_id, received=btc[105].exchange_sequence_id))
    events.append(event("disconnect", btc[199], btc[199].timestamp_collector + 1000, btc[240].timestamp_collector - 1000))
    events.append(event("duplicate", btc[10], btc[10].timestamp_collector, btc[50].timestamp_collector, missing=3))
    events.append(event("out_of_order", btc[60], btc[60].timestamp_collector, btc[70].timestamp_collector, missing=2))
    streams[("binance", "btcusdt", "trade")] = btc[:100] + btc[105:200] + btc[240:]

    eth = streams[("binance", "ethusdt", "trade")]
    events.append(event("duplicate", eth[5], eth[5].timestamp_collector, eth[150].timestamp_collector, missing=4))

    skl = streams[("coinbase", "SKL-USD", "trade")]
    events.append(event("gap", skl[9], skl[9].timestamp_collector, skl[12].timestamp_collector, missing=2,
                        expected=skl[10].exchange_sequence_id, received=skl[12].exchange_sequence_id))
    streams[("coinbase", "SKL-USD", "trade")] = skl[:10] + skl[12:]

    book = streams[("okx", "BTC-USDT", "orderbook")]
    events.append(event("gap", book[40], book[40].timestamp_collector, book[41].timestamp_collector,
                        expected=book[40].exchange_sequence_id, received=book[41].exchange_sequence_id))
    events.append(event("resync", book[20], book[20].timestamp_collector, book[25].timestamp_collector,
                        received=book[25].exchange_sequence_id))

    for row in streams[("upbit", "KRW-LAMB", "orderbook")][30:]:
        row.timestamp_collector += UPBIT_BOOK_SHIFT_US
        row.timestamp_exchange += UPBIT_BOOK_SHIFT_US
    rows = [row for members in streams.values() for row in members]
    return rows, events
