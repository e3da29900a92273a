"""Test helpers for the book replay: a reference book written independently of ``pipeline.orderbook``
(Decimal prices, sorted on every read), per-exchange frame readers written from FORMATS.md, and an
archive built in a temporary folder with the SPEC layout and columns."""
from __future__ import annotations

import datetime
import json
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Iterable

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import GAPS_DDL, SNAPSHOT_SCHEMA

T0 = 1_795_615_200_000_000  # 2026-11-25T14:00:00Z in μs
T0_ISO = "2026-11-25T14:00:00Z"


class RefBook:
    """A deliberately naive L2 book: Decimal keys, sorted when read."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}

    def snapshot(self, bids: Iterable, asks: Iterable) -> None:
        self.bids, self.asks = {}, {}
        self.delta(bids, asks)

    def delta(self, bids: Iterable, asks: Iterable) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for level in levels:
                price, size = str(level[0]), str(level[1])
                if Decimal(size) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = (price, size)

    def top(self, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = [self.bids[p] for p in sorted(self.bids, reverse=True)[:n]]
        asks = [self.asks[p] for p in sorted(self.asks)[:n]]
        return bids, asks

    def copy(self) -> "RefBook":
        other = RefBook()
        other.bids, other.asks = dict(self.bids), dict(self.asks)
        return other

    def row(self, depth: int) -> dict:
        """The level columns of a replay row for this book."""
        bids, asks = self.top(depth)
        row = {}
        for prefix, levels in (("bid", bids), ("ask", asks)):
            for i in range(depth):
                row[f"{prefix}_price_{i}"] = float(levels[i][0]) if i < len(levels) else None
                row[f"{prefix}_size_{i}"] = float(levels[i][1]) if i < len(levels) else None
        return row


def null_row(depth: int) -> dict:
    return {f"{prefix}_{kind}_{i}": None for prefix in ("bid", "ask") for kind in ("price", "size") for i in range(depth)}


def ref_okx_checksum(bids: list, asks: list) -> int:
    """OKX's rule, written again from the docs: top 25 interleaved bid:ask, signed CRC32."""
    parts = []
    for i in range(25):
        if i < len(bids):
            parts += [bids[i][0], bids[i][1]]
        if i < len(asks):
            parts += [asks[i][0], asks[i][1]]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc >= 2**31 else crc


# -- reading frames as FORMATS.md describes them (independent of pipeline.orderbook.decode)

def ref_apply(exchange: str, book: RefBook, frame: bytes | str) -> None:
    if exchange == "upbit":
        msg = json.loads(frame, parse_float=str, parse_int=str)
        book.snapshot([(u["bp"], u["bs"]) for u in msg["obu"]], [(u["ap"], u["as"]) for u in msg["obu"]])
        return
    msg = orjson.loads(frame)
    if exchange == "okx":
        (data,) = msg["data"]
        if msg.get("action", "snapshot") == "snapshot":
            book.snapshot(data["bids"], data["asks"])
        else:
            book.delta(data["bids"], data["asks"])
    elif exchange == "bybit":
        (book.snapshot if msg["type"] == "snapshot" else book.delta)(msg["data"]["b"], msg["data"]["a"])
    elif exchange == "coinbase":
        if msg["type"] == "snapshot":
            book.snapshot(msg["bids"], msg["asks"])
        else:
            book.delta([c[1:] for c in msg["changes"] if c[0] == "buy"], [c[1:] for c in msg["changes"] if c[0] == "sell"])
    elif exchange == "binance":
        data = msg.get("data", msg)
        book.snapshot(data["bids"], data["asks"])
    else:
        raise AssertionError(exchange)


# -- synthetic frames made from a reference book (a resync snapshot equal to a real book state)

def okx_snapshot_frame(inst: str, book: RefBook, ts_ms: int) -> bytes:
    bids, asks = book.top(10_000)
    data = {"asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": str(ts_ms), "checksum": ref_okx_checksum(bids, asks)}
    return orjson.dumps({"arg": {"channel": "books", "instId": inst}, "action": "snapshot", "data": [data]})


def bybit_snapshot_frame(symbol: str, book: RefBook, u: int, ts_ms: int) -> bytes:
    bids, asks = book.top(10_000)
    return orjson.dumps({"topic": f"orderbook.50.{symbol}", "ts": ts_ms, "type": "snapshot",
                         "data": {"s": symbol, "b": [list(level) for level in bids], "a": [list(level) for level in asks],
                                  "u": u, "seq": 1}, "cts": ts_ms})


# -- the archive

def row(exchange: str, symbol: str, seq_id: str, received: int, data: bytes | str, ts_exchange: int | None = None) -> dict:
    return {"exchange": exchange, "symbol": symbol, "data_type": "orderbook", "exchange_sequence_id": seq_id,
            "timestamp_collector": received, "timestamp_exchange": ts_exchange,
            "data": data.decode() if isinstance(data, bytes) else data}


def gap(kind: str, exchange: str, symbol: str, start: int, end: int | None) -> dict:
    return {"kind": kind, "exchange": exchange, "symbol": symbol, "data_type": "orderbook", "expected": None,
            "received": None, "missing": None, "start_time": start, "end_time": end}


def _day(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%d")


def write_archive(root: Path, rows: list[dict], gaps: list[dict] = (), files_per_stream: int = 2) -> Path:
    """``{exchange}/{symbol}/{YYYY-MM-DD}/{ts}.parquet`` per sealed batch (rows split into
    ``files_per_stream`` files, in the persisted order: by receipt time) and
    ``gaps/{exchange}/{symbol}/{YYYY-MM-DD}/{first}-{last}.parquet`` with the columns of GAPS_DDL."""
    streams: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        streams.setdefault((r["exchange"], r["symbol"]), []).append(r)
    for (exchange, symbol), stream in streams.items():
        stream = sorted(stream, key=lambda r: (r["timestamp_collector"], r["exchange_sequence_id"]))
        size = -(-len(stream) // files_per_stream)
        for i in range(0, len(stream), size):
            chunk = stream[i:i + size]
            first = chunk[0]["timestamp_collector"]
            path = root / exchange / symbol / _day(first) / f"{first}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(chunk, schema=SNAPSHOT_SCHEMA), path, compression="zstd")
    by_stream: dict[tuple[str, str], list[dict]] = {}
    for g in gaps:
        by_stream.setdefault((g["exchange"], g["symbol"]), []).append(g)
    for (exchange, symbol), events in by_stream.items():
        con = duckdb.connect()
        con.execute(GAPS_DDL)
        columns = [c[0] for c in con.execute("DESCRIBE gaps").fetchall()]
        con.executemany(f"INSERT INTO gaps VALUES ({', '.join('?' * len(columns))})",
                        [[e[c] for c in columns] for e in events])
        first = min(e["start_time"] for e in events)
        last = max(e["end_time"] if e["end_time"] is not None else e["start_time"] for e in events)
        path = root / "gaps" / exchange / symbol / _day(first) / f"{first}-{last}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY (SELECT * FROM gaps ORDER BY start_time) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
        con.close()
    root.mkdir(parents=True, exist_ok=True)
    return root


def expected_rows(exchange: str, symbol: str, timeline: list[tuple[int, bytes]], samples: Iterable[int], depth: int,
                  unknown: Iterable[tuple[int, int]] = ()) -> list[dict]:
    """What a replay must give: for each sample, the reference book of every frame received at or
    before it (``timeline`` in true order), or a NULL row where ``unknown`` says so."""
    unknown = list(unknown)
    out = []
    book, i = RefBook(), 0
    for t in samples:
        while i < len(timeline) and timeline[i][0] <= t:
            ref_apply(exchange, book, timeline[i][1])
            i += 1
        invalid = i == 0 or any(start <= t < end for start, end in unknown)
        levels = null_row(depth) if invalid else book.row(depth)
        out.append({"timestamp": t, "valid": not invalid, **levels})
    return out
