"""End to end: the simulator with injected gaps, duplicates and disconnects -> ingest -> check -> persist ->
archive -> ``collector report``. The JSON figures equal the faults the simulator's manifest records and
the counts the archive's views give."""
from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest

from pipeline import archive_views
from tests.conftest import REPO, wait_for
from tests.e2e.harness import Pipeline, read_manifest

EVENTS = 400  # per stream, at 40 per second: 10 s, with a disconnect every 3 s


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    pipeline = Pipeline(root)
    manifest_path = root / "manifest.jsonl"
    try:
        _, port = pipeline.simulator("binance", "--seed", "5", "--rate", "40", "--count", str(EVENTS), "--gap-every", "23",
                                     "--duplicate-every", "17", "--disconnect-every", "3", "--manifest", str(manifest_path))
        pipeline.stages("binance", port, "btcusdt")

        def sent() -> set:
            return {(e["data_type"], e["exchange_sequence_id"]) for e in read_manifest(manifest_path) if e["sent"]}

        def done() -> bool:
            events = {(e["data_type"], e["event"]) for e in read_manifest(manifest_path)}
            return len(events) == 2 * EVENTS and pipeline["persist"].metric("collector_db_snapshots_written_total") == len(sent())

        wait_for(done, 90, what="every simulated event sent and stored")
        reconnects = pipeline["ingest-binance"].metric("collector_websocket_reconnects_total")
        code, _ = pipeline["ingest-binance"].stop()
        assert code == 0
        time.sleep(4)  # check confirms a gap 2 s after it saw it
        pipeline.seal_and_archive()
        pipeline.stop_all()
        out = root / "summary.json"
        result = subprocess.run([sys.executable, "-m", "stages.cli", "report", "--archive-url", str(pipeline.archive_dir),
                                 "--output", str(root / "report.html"), "--json", str(out)],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        yield pipeline, read_manifest(manifest_path), orjson.loads(out.read_bytes()), reconnects
    finally:
        pipeline.close()


def test_report_equals_the_injected_faults(run):
    pipeline, manifest, summary, reconnects = run
    streams = {s["data_type"]: s for s in summary["streams"]}
    assert sorted(streams) == ["orderbook", "trade"]
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    for data_type, stream in streams.items():
        distinct = {e["exchange_sequence_id"] for e in manifest if e["data_type"] == data_type and e["sent"]}
        assert stream["records"] == len(distinct)
        assert stream["records"] == con.execute("SELECT count(*) FROM snapshots WHERE data_type = ?", [data_type]).fetchone()[0]
        # every simulated disconnect is one outage of each stream of the connection
        assert reconnects >= 2
        assert stream["outages"] == reconnects
        assert stream["outages"] == con.execute("SELECT count(*) FROM gaps WHERE kind = 'disconnect' AND data_type = ?",
                                                [data_type]).fetchone()[0]

    # trade ids are contiguous: each skipped id is a gap of one, unless a neighbour was lost in an outage
    # (events the simulator made while the client was away) or a reconnect fell between its neighbours
    # (the first record of a new connection is never a gap)
    times = dict(con.execute("SELECT exchange_sequence_id::BIGINT, timestamp_collector FROM snapshots WHERE data_type = 'trade'").fetchall())
    outages = con.execute("SELECT start_time, end_time FROM gaps WHERE kind = 'disconnect' AND data_type = 'trade'").fetchall()
    skipped = [int(e["exchange_sequence_id"]) for e in manifest if e["data_type"] == "trade" and e["fault"] == "gap"]
    assert len(skipped) == EVENTS // 23
    expected = [i for i in skipped if i - 1 in times and i + 1 in times
                and not any(times[i - 1] <= a and b <= times[i + 1] for a, b in outages)]
    assert len(expected) >= len(skipped) // 2, "too few skipped ids away from the outages to prove anything"
    trade = streams["trade"]
    assert (trade["gaps"], trade["missing_ids"]) == (len(expected), len(expected))
    reported = {int(r[0]) for r in con.execute("SELECT expected FROM gaps WHERE kind = 'gap'").fetchall()}
    assert reported == set(expected)
    assert streams["orderbook"]["gaps"] == 0  # depth20 ids jump by design: never a gap
    assert summary["verdict"] == "has outages"
    for stream in streams.values():
        assert 0 < stream["coverage"] < 1  # the outages
    assert streams["trade"]["latency_p50_ms"] is not None and streams["orderbook"]["latency_p50_ms"] is None  # depth20 has no time


def test_report_counts_the_duplicates_check_saw(run):
    _, manifest, summary, _ = run
    streams = {s["data_type"]: s for s in summary["streams"]}
    for data_type, stream in streams.items():
        repeats = sum(1 for e in manifest if e["data_type"] == data_type and e["fault"] == "duplicate")
        assert repeats > 0
        assert stream["duplicates"] == repeats
