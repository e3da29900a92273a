"""The spine, end to end: simulator -> ingest -> check -> persist -> archive, each a real OS process.

A known set of Binance messages, repeats included, must land in the archive's Parquet files exactly
once each, with the SPEC columns, μs timestamps and keys, and every process must exit 0 within its
shutdown budget.
"""
from __future__ import annotations

import re
import time

import orjson
import pyarrow.parquet as pq
import pytest

from pipeline import archive_views
from tests.conftest import wait_for
from tests.e2e.harness import SHUTDOWN_BUDGET, Pipeline, read_manifest

EVENTS_PER_STREAM = 150


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    yield p
    p.close()


def sent_events(manifest: list[dict]) -> set[tuple[str, str, str, str]]:
    return {(e["exchange"], e["symbol"], e["data_type"], e["exchange_sequence_id"]) for e in manifest if e.get("sent", True)}


def test_every_distinct_event_is_archived_exactly_once(pipeline, tmp_path):
    started_us = time.time_ns() // 1000
    manifest_path = tmp_path / "manifest.jsonl"
    pipeline.simulator("binance", "--seed", "7", "--rate", "300", "--count", str(EVENTS_PER_STREAM),
                       "--duplicate-every", "9", "--manifest", str(manifest_path))
    pipeline.stages("binance", _port(pipeline), "btcusdt,ETH/USDT")

    def all_sent_and_stored():
        manifest = read_manifest(manifest_path)
        distinct = sent_events(manifest)
        done = len(distinct) == 4 * EVENTS_PER_STREAM
        return done and pipeline["persist"].metric("collector_db_snapshots_written_total") == len(distinct)

    wait_for(all_sent_and_stored, 60, what="every simulated event stored in DuckDB")
    manifest = read_manifest(manifest_path)
    repeats = [e for e in manifest if e.get("fault") == "duplicate"]
    assert repeats, "the simulator sent no repeats: the test would not prove deduplication"
    assert pipeline["check"].metric("collector_sequence_duplicates_total") == len(repeats)

    pipeline.seal_and_archive()
    results = pipeline.stop_all()
    ended_us = time.time_ns() // 1000
    for name, (code, seconds) in results.items():
        assert code == 0, f"{name} exited {code}:\n{pipeline[name].output()[-3000:]}"
        assert seconds <= SHUTDOWN_BUDGET[pipeline[name].kind] + 1, f"{name} took {seconds:.1f}s to stop"

    files = sorted(pipeline.archive_dir.rglob("*.parquet"))
    data_files = [f for f in files if "gaps" not in f.relative_to(pipeline.archive_dir).parts[:1]]
    assert data_files
    for path in data_files:
        key = path.relative_to(pipeline.archive_dir).as_posix()
        assert re.fullmatch(r"binance/(btcusdt|ethusdt)/\d{4}-\d{2}-\d{2}/\d{16}\.parquet", key), key
        metadata = pq.read_metadata(path)
        assert metadata.row_group(0).column(0).compression == "ZSTD"
        table = pq.read_table(path)
        assert table.schema.names == ["exchange", "symbol", "data_type", "exchange_sequence_id",
                                      "timestamp_collector", "timestamp_exchange", "data"]
        first = min(table.column("timestamp_collector").to_pylist())
        assert key.endswith(f"/{first}.parquet"), "the key must be a function of the file's rows"

    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    rows = con.execute("SELECT exchange, symbol, data_type, exchange_sequence_id, timestamp_collector, "
                       "timestamp_exchange, data FROM snapshots").fetchall()
    stored = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert len(stored) == len(set(stored)), "an event was archived twice"
    assert set(stored) == sent_events(manifest)
    for exchange, symbol, data_type, sequence_id, collected, exchange_time, data in rows:
        assert started_us <= collected <= ended_us, "timestamp_collector must be μs since the epoch"
        message = orjson.loads(data)
        assert message["stream"].startswith(symbol + "@")
        if data_type == "trade":
            assert sequence_id == str(message["data"]["t"])
            assert exchange_time == message["data"]["E"] * 1000
        else:
            assert sequence_id == str(message["data"]["lastUpdateId"])
            assert exchange_time is None


def _port(pipeline: Pipeline) -> int:
    args = pipeline["simulate-binance"].args
    return int(args[args.index("--port") + 1])
