"""The loss window of a kill -9, made deterministic: records provably in flight when a stage dies.

``test_random_kills`` kills at random moments, when usually nothing (or a record or two) is in
flight. Here each stage is first frozen (SIGSTOP) while records keep coming, so that its ZeroMQ
queues and socket buffers certainly hold some, and then SIGKILLed and started again. What was in
flight may be lost (that is the documented window), but it must be *counted*: every id missing from
the archive must be named by a row of the gap log: a ``gap`` row, an outage row saying which ids, or
persist's ``lost`` row (from the per-stream record numbers ingest stamps; see ``pipeline.losses``).
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import wait_for
from tests.e2e.feed import Feeder, trade_records
from tests.e2e.harness import Pipeline
from tests.faults.common import COUNTING_KINDS, counted_by_gap_rows, missing_ids, stored_rows

SYMBOLS = ["btcusdt", "ethusdt"]


def losses(pipeline: Pipeline) -> dict[str, dict]:
    """Per Binance trade symbol: ids missing between the first and last stored, and those a gap row names."""
    trades, gap_rows = stored_rows(
        pipeline.archive_dir, None,
        "SELECT symbol, CAST(exchange_sequence_id AS BIGINT) FROM allrows WHERE exchange = 'binance' AND data_type = 'trade'",
        f"SELECT symbol, kind, expected, missing FROM allgaps WHERE kind IN {COUNTING_KINDS} "
        "AND exchange = 'binance' AND data_type = 'trade'")
    result = {}
    for symbol in {s for s, _ in trades}:
        ids = [i for s, i in trades if s == symbol]
        missing = missing_ids(ids)
        counted = counted_by_gap_rows(missing, [row[1:] for row in gap_rows if row[0] == symbol])
        result[symbol] = {"stored": len(ids), "distinct": len(set(ids)), "missing": len(missing), "counted": len(counted)}
    return result


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, env={"BATCH_INTERVAL": "0.5"})
    yield p
    p.close()


def start_downstream(pipeline: Pipeline) -> None:
    pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
    pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
    pipeline.start("archive", "archive")
    for process in pipeline.processes.values():
        wait_for(lambda p=process: p.ready() or p.popen.poll() is not None, 30, what=f"{process.name} ready")


def restart(pipeline: Pipeline, name: str, *args: str):
    process = pipeline.start(f"{name}-restarted", *args)
    wait_for(lambda: process.ready() or process.popen.poll() is not None, 30, what=f"{name} restarted")
    pipeline.processes[name] = process
    return process


def test_persist_killed_with_records_in_flight_counts_what_it_lost(pipeline):
    start_downstream(pipeline)
    records = trade_records(SYMBOLS, 6000)
    feeder = Feeder(pipeline.ingest_endpoint)
    try:
        feeder.send(records[:200])
        wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") >= 200, 30, what="stored")
        pipeline["persist"].popen.send_signal(signal.SIGSTOP)
        feeder.send(records[200:10000])
        wait_for(lambda: pipeline["check"].metric("collector_messages_received_total") >= 10000, 30, what="check forwarded")
        time.sleep(1)
        pipeline["persist"].popen.send_signal(signal.SIGKILL)
        pipeline["persist"].popen.wait()
        restart(pipeline, "persist", "persist", "--pull", pipeline.persist_endpoint)
        feeder.send(records[10000:])
        wait_for(lambda: pipeline["check"].metric("collector_messages_received_total") >= len(records), 30, what="sent")
        time.sleep(3)
        pipeline.seal_and_archive()
    finally:
        feeder.close()
    found = losses(pipeline)
    print(found)
    assert all(f["stored"] == f["distinct"] for f in found.values()), "duplicates"
    assert sum(f["missing"] for f in found.values()) > 0, "the scenario must put records in flight"
    assert all(f["missing"] == f["counted"] for f in found.values()), f"silent loss: {found}"


def test_check_killed_with_records_in_flight_counts_what_it_lost(pipeline):
    start_downstream(pipeline)
    records = trade_records(SYMBOLS, 6000)
    feeder = Feeder(pipeline.ingest_endpoint)
    try:
        feeder.send(records[:200])
        wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") >= 200, 30, what="stored")
        pipeline["check"].popen.send_signal(signal.SIGSTOP)
        feeder.send(records[200:10000])
        time.sleep(2)  # into check's socket buffers and queue
        pipeline["check"].popen.send_signal(signal.SIGKILL)
        pipeline["check"].popen.wait()
        restart(pipeline, "check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
        feeder.send(records[10000:])
        wait_for(lambda: pipeline["persist"].metric("collector_messages_received_total") > 0, 30, what="flowing again")
        time.sleep(4)
        pipeline.seal_and_archive()
    finally:
        feeder.close()
    found = losses(pipeline)
    print(found)
    assert all(f["stored"] == f["distinct"] for f in found.values()), "duplicates"
    assert sum(f["missing"] for f in found.values()) > 0, "the scenario must put records in flight"
    assert all(f["missing"] == f["counted"] for f in found.values()), f"silent loss: {found}"


def test_ingest_killed_with_frames_in_flight_counts_what_it_lost(pipeline, tmp_path):
    _, port = pipeline.simulator("binance", "--seed", "3", "--rate", "500")
    pipeline.stages("binance", port, "btcusdt,ethusdt", "trades")
    ingest = pipeline["ingest-binance"]
    wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") >= 500, 30, what="stored")
    ingest.popen.send_signal(signal.SIGSTOP)  # the simulator keeps writing into ingest's socket buffers
    time.sleep(2)
    ingest.popen.send_signal(signal.SIGKILL)
    ingest.popen.wait()
    restart(pipeline, "ingest-binance", "ingest", "--exchange", "binance", "--symbols", "btcusdt,ethusdt", "--feeds",
            "trades", "--ws-url", f"ws://127.0.0.1:{port}", "--push", pipeline.ingest_endpoint)
    written = pipeline["persist"].metric("collector_db_snapshots_written_total")
    wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") > written + 500, 30,
             what="flowing again")
    time.sleep(3)
    pipeline.seal_and_archive()
    found = losses(pipeline)
    print(found)
    assert all(f["stored"] == f["distinct"] for f in found.values()), "duplicates"
    assert sum(f["missing"] for f in found.values()) > 0, "the scenario must put frames in flight"
    assert all(f["missing"] == f["counted"] for f in found.values()), f"silent loss: {found}"
