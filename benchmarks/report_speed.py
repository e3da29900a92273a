"""How long ``collector report`` takes over a synthetic archive of a day, or a month, of five exchanges.

    python benchmarks/report_speed.py                      # 1 day, 5 exchanges x 2 symbols, book 10/s + trades 5/s per symbol
    python benchmarks/report_speed.py --days 30 --dir /tmp/month --keep

The archive has the real layout and columns (``{exchange}/{symbol}/{day}/{ts}.parquet``, zstd, one
file per exchange/symbol/hour as persist seals with ARCHIVE_INTERVAL_SECS=3600, and the gap log under
``gaps/``), with faults in it every day: a 2-minute outage per exchange, trade ids skipped, a book
resync on the delta-book exchanges (OKX, Bybit) and duplicate counters. The ``data`` column holds a
short JSON object instead of a whole message: the report never reads it (Parquet is columnar), so
its size changes the disk footprint, not the report's time. An existing archive with the same
parameters is reused (``--dir`` + ``--keep``).

The report is timed end to end through the real command (``python -m stages.cli report``), as an
operator runs it; the JSON it writes is checked against what was generated.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = {"binance": ["btcusdt", "ethusdt", "solusdt"], "coinbase": ["BTC-USD", "ETH-USD", "SOL-USD"],
           "upbit": ["KRW-BTC", "KRW-ETH", "KRW-SOL"], "okx": ["BTC-USDT", "ETH-USDT", "SOL-USDT"],
           "bybit": ["BTCUSDT", "ETHUSDT", "SOLUSDT"]}
DAY0_US = 1_723_075_200_000_000  # 2024-08-08T00:00:00Z
HOUR_US = 3_600_000_000
OUTAGE_US = 120_000_000
GAP_EVERY = 40_000  # every N-th trade id of a stream is skipped


def generate(root: Path, days: int, exchanges: list[str], symbols: int, book_rate: float, trade_rate: float) -> dict:
    """Writes the archive; returns what the report must find (records and faults)."""
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    books, trades = int(book_rate * 3600), int(trade_rate * 3600)
    book_step, trade_step = HOUR_US // books, HOUR_US // trades
    expected = {"records": 0, "gaps": 0, "outages": 0, "book_unknown": 0, "duplicates": 0, "files": 0}
    for d in range(days):
        day_us = DAY0_US + d * 24 * HOUR_US
        day = time.strftime("%Y-%m-%d", time.gmtime(day_us / 1e6))
        for x, exchange in enumerate(exchanges):
            outage = (day_us + (3 + x) * HOUR_US + 1_800_000_000, day_us + (3 + x) * HOUR_US + 1_800_000_000 + OUTAGE_US)
            for symbol in SYMBOLS[exchange][:symbols]:
                no_book_time = exchange == "binance"  # depth20 carries no event time
                events = []
                for h in range(24):
                    h0 = day_us + h * HOUR_US
                    base_book, base_trade = (d * 24 + h) * books, (d * 24 + h) * trades
                    rows = f"""
                        SELECT 'orderbook' AS data_type, {base_book} + i AS sid, {h0} + i * {book_step} + (hash(i) % {book_step - 1})::BIGINT AS tc
                        FROM range({books}) t(i)
                        UNION ALL
                        SELECT 'trade', {base_trade} + i, {h0} + i * {trade_step} + (hash(i + 7) % {trade_step - 1})::BIGINT
                        FROM range({trades}) t(i) WHERE ({base_trade} + i) % {GAP_EVERY} <> 0"""
                    where = f"NOT (tc BETWEEN {outage[0]} AND {outage[1]})"
                    latency = "5000 + (hash(sid, 3) % 40000)::BIGINT + CASE WHEN hash(sid, 5) % 100 = 0 THEN (hash(sid) % 400000)::BIGINT ELSE 0 END"
                    exchange_time = f"CASE WHEN data_type = 'orderbook' AND {no_book_time} THEN NULL ELSE tc - ({latency}) END"
                    path = root / exchange / symbol / day / f"{h0}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    con.execute(f"""COPY (SELECT '{exchange}' AS exchange, '{symbol}' AS symbol, data_type,
                                                 CAST(sid AS VARCHAR) AS exchange_sequence_id, tc AS timestamp_collector,
                                                 {exchange_time} AS timestamp_exchange, '{{"e":"synthetic"}}' AS data
                                          FROM ({rows}) WHERE {where} ORDER BY data_type, tc)
                                    TO '{path}' (FORMAT parquet, COMPRESSION zstd)""")
                    expected["records"] += con.execute(f"SELECT count(*) FROM ({rows}) WHERE {where}").fetchone()[0]
                    expected["files"] += 1
                    skipped = [i for i in range(base_trade, base_trade + trades) if i % GAP_EVERY == 0]
                    for sid in skipped:  # the trade before and after the skipped id
                        i = sid - base_trade
                        before = h0 + (i - 1) * trade_step + 1 if i else h0
                        after = h0 + (i + 1) * trade_step
                        if not (outage[0] <= before <= outage[1] or outage[0] <= after <= outage[1]):
                            events.append(("gap", "trade", str(sid), str(sid + 1), 1, before, after))
                for data_type in ("orderbook", "trade"):
                    events.append(("disconnect", data_type, None, None, None, *outage))
                    events.append(("duplicate", data_type, None, None, 3, day_us + 9 * HOUR_US, day_us + 9 * HOUR_US + 60_000_000))
                if exchange in ("okx", "bybit"):
                    events.append(("resync", "orderbook", None, None, None, day_us + 15 * HOUR_US, day_us + 15 * HOUR_US + 3_000_000))
                expected["gaps"] += sum(1 for e in events if e[0] == "gap")
                expected["outages"] += sum(1 for e in events if e[0] == "disconnect")
                expected["book_unknown"] += sum(1 for e in events if e[0] == "resync")
                expected["duplicates"] += sum(e[4] for e in events if e[0] == "duplicate")
                first, last = min(e[5] for e in events), max(e[6] for e in events)
                gap_path = root / "gaps" / exchange / symbol / day / f"{first}-{last}.parquet"
                gap_path.parent.mkdir(parents=True, exist_ok=True)
                con.execute("CREATE OR REPLACE TEMP TABLE g (kind VARCHAR, exchange VARCHAR, symbol VARCHAR, data_type VARCHAR, expected VARCHAR, "
                            "received VARCHAR, missing BIGINT, start_time BIGINT, end_time BIGINT)")
                con.executemany("INSERT INTO g VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(k, exchange, symbol, t, e, r, m, s, f) for k, t, e, r, m, s, f in events])
                con.execute(f"COPY g TO '{gap_path}' (FORMAT parquet, COMPRESSION zstd)")
        print(f"  generated {day}: {expected['records']:,} records so far", flush=True)
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--exchanges", type=int, default=5, help="how many of binance, coinbase, upbit, okx, bybit")
    parser.add_argument("--symbols", type=int, default=2, help="symbols per exchange (at most 3)")
    parser.add_argument("--book-rate", type=float, default=10.0, help="book messages per second per symbol")
    parser.add_argument("--trade-rate", type=float, default=5.0, help="trades per second per symbol")
    parser.add_argument("--dir", type=Path, default=None, help="where the archive goes (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the archive (and reuse it next time)")
    parser.add_argument("--output", type=Path, default=None, help="keep the HTML report here")
    parser.add_argument("--runs", type=int, default=1, help="time the report this many times")
    args = parser.parse_args()

    exchanges = list(SYMBOLS)[:args.exchanges]
    root = args.dir or Path(tempfile.mkdtemp(prefix="report-bench-"))
    params = {k: getattr(args, k) for k in ("days", "exchanges", "symbols", "book_rate", "trade_rate")}
    stamp = root / "benchmark.json"
    if stamp.exists() and json.loads(stamp.read_text())["params"] == params:
        expected = json.loads(stamp.read_text())["expected"]
        print(f"reusing the archive in {root}")
    else:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        print(f"generating {args.days} day(s) of {len(exchanges)} exchanges x {args.symbols} symbols in {root} ...", flush=True)
        began = time.monotonic()
        expected = generate(root, args.days, exchanges, args.symbols, args.book_rate, args.trade_rate)
        stamp.write_text(json.dumps({"params": params, "expected": expected}))
        print(f"generated in {time.monotonic() - began:.0f} s", flush=True)
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))

    out = Path(tempfile.mkdtemp(prefix="report-out-"))
    html, summary = args.output or out / "report.html", out / "summary.json"
    timings = []
    for _ in range(args.runs):
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "stages.cli", "report", "--archive-url", str(root), "--output", str(html),
                                 "--json", str(summary)], cwd=REPO, capture_output=True, text=True)
        timings.append(time.monotonic() - began)
        if result.returncode != 0:
            sys.exit(f"report failed:\n{result.stderr}")
    figures = json.loads(summary.read_text())["totals"]
    for name in ("records", "gaps", "outages", "book_unknown", "duplicates"):
        assert figures[name] == expected[name], f"{name}: report says {figures[name]}, archive has {expected[name]}"
    print(f"{args.days} day(s), {len(exchanges)} exchanges, {figures['streams']} streams, {expected['records']:,} records, "
          f"{expected['files']:,} files, {size / 1e6:,.0f} MB: report in {min(timings):.1f} s"
          + (f" (runs: {', '.join(f'{t:.1f}' for t in timings)})" if len(timings) > 1 else "")
          + f"; HTML {html.stat().st_size / 1e6:.1f} MB")
    if not args.keep and args.dir is None:
        shutil.rmtree(root)
    if args.output is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
