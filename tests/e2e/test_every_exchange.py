"""Every exchange end to end: simulator -> ingest -> check -> persist -> archive as real processes.

Each distinct event the simulator sent is found exactly once in the archive, and a clean stream of
every feed reports zero gaps, zero out-of-order and zero duplicates.
"""
from __future__ import annotations

import pytest

from pipeline import archive_views, topology
from tests.conftest import wait_for
from tests.e2e.harness import Pipeline, read_manifest

PER_STREAM = 60


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    yield p
    p.close()


def distinct_sent(manifest: list[dict]) -> set[tuple]:
    return {(e["exchange"], e["symbol"], e["data_type"], e["exchange_sequence_id"]) for e in manifest if e.get("sent", True)}


def run(pipeline: Pipeline, tmp_path, exchange: str, *faults: str) -> tuple[set, list[dict]]:
    manifest_path = tmp_path / "manifest.jsonl"
    _, port = pipeline.simulator(exchange, "--seed", "3", "--rate", "100", "--count", str(PER_STREAM),
                                 "--manifest", str(manifest_path), *faults)
    pipeline.stages(exchange, port, topology.DEFAULT_SYMBOLS[exchange])
    streams = 4  # two symbols x (book, trades)

    def stored_everything() -> bool:
        manifest = read_manifest(manifest_path)
        per_stream: dict = {}
        for event in manifest:
            key = (event["symbol"], event["data_type"])
            per_stream[key] = per_stream.get(key, 0) + 1
        complete = len(per_stream) == streams and all(n >= PER_STREAM for n in per_stream.values())
        return complete and pipeline["persist"].metric("collector_db_snapshots_written_total") >= len(distinct_sent(manifest))

    wait_for(stored_everything, 90, what=f"{exchange}: every event sent stored")
    pipeline.seal_and_archive()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    rows = con.execute("SELECT exchange, symbol, data_type, exchange_sequence_id FROM snapshots").fetchall()
    assert len(rows) == len(set(rows)), "an event was archived twice"
    return set(rows), read_manifest(manifest_path)


@pytest.mark.parametrize("exchange", topology.EXCHANGES)
def test_every_distinct_event_archived_once_and_a_clean_stream_has_no_gaps(pipeline, tmp_path, exchange):
    archived, manifest = run(pipeline, tmp_path, exchange, "--duplicate-every", "11")
    assert archived == distinct_sent(manifest)
    assert any(e.get("fault") == "duplicate" for e in manifest)
    check = pipeline["check"]
    assert check.metric("collector_sequence_gaps_total") == 0
    assert check.metric("collector_sequence_out_of_order_total") == 0
    ingest = pipeline[f"ingest-{exchange}"]
    assert ingest.metric("collector_parse_errors_total") == 0
    assert ingest.health()["status"] == "healthy"
