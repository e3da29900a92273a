"""Order books a researcher can trust: resync on a broken chain, checksums, and replay vs the truth.

The simulator keeps a true book and drops one delta (or corrupts one checksum) of one symbol; the
real pipeline must resync only that symbol's book, record the fresh snapshot and a ``resync`` row,
leave every other stream gap-free, and ``collector book`` must rebuild exactly the true book
outside the "book unknown" intervals.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import time

import orjson
import pytest

from pipeline import archive_views
from pipeline.books import replay
from tests.conftest import REPO, wait_for
from tests.e2e.harness import Pipeline, read_manifest

SYMBOLS = {"okx": ("BTC-USDT", "ETH-USDT"), "bybit": ("BTCUSDT", "ETHUSDT")}


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    yield p
    p.close()


def run_book_fault(pipeline: Pipeline, tmp_path, exchange: str, *fault: str):
    broken, healthy = SYMBOLS[exchange]
    manifest = tmp_path / "manifest.jsonl"
    dump = tmp_path / "true-book.jsonl"
    _, port = pipeline.simulator(exchange, "--seed", "11", "--rate", "40", "--count", "80", "--fault-symbols", broken,
                                 "--manifest", str(manifest), "--book-dump", str(dump), "--book-dump-every", "0.2", *fault)
    pipeline.stages(exchange, port, f"{broken},{healthy}")
    return broken, healthy, manifest, dump


def book_snapshots(con, symbol: str) -> int:
    rows = con.execute("SELECT data FROM snapshots WHERE data_type = 'orderbook' AND symbol = ?", [symbol]).fetchall()
    return sum(orjson.loads(d).get("action", orjson.loads(d).get("type")) == "snapshot" for (d,) in rows)


@pytest.mark.parametrize("exchange", ["okx", "bybit"])
def test_a_dropped_delta_resyncs_only_that_symbols_book(pipeline, tmp_path, exchange):
    broken, healthy, manifest, _ = run_book_fault(pipeline, tmp_path, exchange, "--drop-book-delta-every", "40")
    ingest, check = pipeline[f"ingest-{exchange}"], pipeline["check"]
    wait_for(lambda: ingest.metric("collector_book_resyncs_total", symbol=broken, reason="gap") >= 1, 60, what="resync")
    dropped = [e for e in read_manifest(manifest) if e["fault"] == "drop_book_delta"]
    assert len(dropped) == 1 and dropped[0]["symbol"] == broken

    def finished() -> bool:
        sent = read_manifest(manifest)
        per_stream = {(e["symbol"], e["data_type"]) for e in sent if (e.get("event") or 0) >= 80}
        return len(per_stream) == 4

    wait_for(finished, 60, what="every stream sent its events")
    assert ingest.metric("collector_book_resyncs_total", symbol=broken) == 1, "exactly one resync"
    assert ingest.metric("collector_book_resyncs_total", symbol=healthy) == 0
    assert ingest.metric("collector_websocket_reconnects_total") == 0, "a resync keeps the connection"
    for symbol, data_type in [(healthy, "orderbook"), (healthy, "trade"), (broken, "trade")]:
        assert check.metric("collector_sequence_gaps_total", symbol=symbol, data_type=data_type) == 0

    pipeline.seal_and_archive()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    assert book_snapshots(con, broken) == 2, "the first snapshot and the fresh one after the resync"
    assert book_snapshots(con, healthy) == 1
    resyncs = con.execute("SELECT symbol, data_type, start_time, end_time FROM gaps WHERE kind = 'resync'").fetchall()
    assert [(s, d) for s, d, _, _ in resyncs] == [(broken, "orderbook")]
    assert resyncs[0][2] < resyncs[0][3]


def test_a_corrupted_okx_checksum_is_counted_and_resynced(pipeline, tmp_path):
    broken, healthy, _, _ = run_book_fault(pipeline, tmp_path, "okx", "--corrupt-checksum-every", "30")
    ingest = pipeline["ingest-okx"]
    wait_for(lambda: ingest.metric("collector_book_resyncs_total", symbol=broken, reason="checksum") >= 1, 60,
             what="checksum resync")
    assert ingest.metric("collector_book_checksum_failures_total", symbol=broken) >= 1
    assert ingest.metric("collector_book_checksum_failures_total", symbol=healthy) == 0
    assert ingest.metric("collector_book_resyncs_total", symbol=healthy) == 0


@pytest.mark.parametrize("exchange", ["okx", "bybit"])
def test_the_rebuilt_book_equals_the_true_book_outside_unknown_intervals(pipeline, tmp_path, exchange):
    broken, healthy, manifest, dump = run_book_fault(pipeline, tmp_path, exchange, "--drop-book-delta-every", "40")
    ingest = pipeline[f"ingest-{exchange}"]
    wait_for(lambda: ingest.metric("collector_book_resyncs_total", symbol=broken) >= 1, 60, what="resync")
    wait_for(lambda: len({(e["symbol"], e["data_type"]) for e in read_manifest(manifest) if (e.get("event") or 0) >= 80}) == 4,
             60, what="every stream sent its events")
    pipeline.seal_and_archive()
    pipeline.stop_all()  # the simulator writes its last true book on the way out

    truth: dict[tuple[str, str], dict] = {}
    for line in dump.read_bytes().splitlines():
        book = orjson.loads(line)
        truth[(book["symbol"], str(book["seq"]))] = book
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    compared = invalid = 0
    for symbol in (broken, healthy):
        table = replay(con, exchange, symbol, 0, time.time_ns() // 1000, depth=20).to_pylist()
        for row in table:
            true_book = truth.get((symbol, (row["exchange_sequence_id"] or "").split(":")[0]))
            if not row["valid"]:
                invalid += 1
                assert row["bid_price_0"] is None and row["ask_price_0"] is None
                continue
            if true_book is None:
                continue
            for side, prefix in (("bids", "bid"), ("asks", "ask")):
                levels = true_book[side][:20]
                assert [row[f"{prefix}_price_{i}"] for i in range(len(levels))] == [float(p) for p, _ in levels]
                assert [row[f"{prefix}_size_{i}"] for i in range(len(levels))] == [float(s) for _, s in levels]
            compared += 1
    assert compared >= 10, "the comparison must cover real samples"
    assert invalid >= 1, "the interval between the broken chain and the fresh snapshot is marked invalid"

    out = tmp_path / "book.csv"
    first, last = con.execute("SELECT min(timestamp_collector), max(timestamp_collector) FROM snapshots").fetchone()
    result = subprocess.run([sys.executable, "-m", "stages.cli", "book", "--exchange", exchange, "--symbol", healthy,
                             "--from", str(first), "--to", str(last), "--every", "0.5", "--depth", "5",
                             "--output", str(out), "--archive-url", str(pipeline.archive_dir)],
                            cwd=REPO, env=pipeline.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    header = next(csv.reader(out.open()))
    assert header[:3] == ["timestamp", "exchange", "symbol"] and "ask_size_4" in header and header[-1] == "valid"
