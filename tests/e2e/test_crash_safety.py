"""kill -9 at every step of the persist -> archive hand-off loses nothing and duplicates nothing.

Each case feeds persist real ZeroMQ messages (repeats included), lets the process die exactly as
``kill -9`` would at one named point (``COLLECTOR_CRASH_AT``), restarts it, and then checks the
archive with ``collector query``: every distinct event exactly once, every gap row exactly once.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, wait_for
from tests.e2e.feed import Feeder, sample_gaps, trade_records
from tests.e2e.harness import Pipeline

SYMBOLS = ["btcusdt", "ethusdt"]
PER_SYMBOL = 300


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, env={"BATCH_INTERVAL": "0.5"})
    yield p
    p.close()


def archived_counts(pipeline: Pipeline) -> tuple[int, int, int]:
    """(rows, distinct keys, gap rows) in the archive, as ``collector query`` reports them."""
    out = pipeline.root / "counts.csv"
    subprocess.run([sys.executable, "-m", "stages.cli", "query",
                    "SELECT (SELECT count(*) FROM snapshots) AS n, "
                    "(SELECT count(DISTINCT (exchange, symbol, data_type, exchange_sequence_id)) FROM snapshots) AS d, "
                    "(SELECT count(*) FROM gaps) AS g",
                    "--archive-url", str(pipeline.archive_dir), "--output", str(out)],
                   cwd=REPO, env=pipeline.env, check=True, capture_output=True, timeout=60)
    n, d, g = out.read_text().splitlines()[1].split(",")
    return int(n), int(d), int(g)


def start_persist(pipeline: Pipeline, crash_at: str = "", name: str = "persist", batch_interval: str = "0.5"):
    pipeline.env.update(COLLECTOR_CRASH_AT=crash_at, BATCH_INTERVAL=batch_interval)
    process = pipeline.start(name, "persist", "--pull", pipeline.persist_endpoint)
    pipeline.env.update(COLLECTOR_CRASH_AT="", BATCH_INTERVAL="0.5")
    return process


def wait_ready(process) -> None:
    wait_for(lambda: process.ready() or process.popen.poll() is not None, 30, what=f"{process.name} ready")


PERSIST_POINTS = ["persist.before_insert", "persist.after_insert", "seal.after_rename", "seal.after_file", "seal.before_drop"]


@pytest.mark.parametrize("crash_at", PERSIST_POINTS)
def test_persist_killed_at_each_step_loses_and_duplicates_nothing(pipeline, crash_at):
    records = trade_records(SYMBOLS, PER_SYMBOL)
    gaps = sample_gaps(SYMBOLS)
    # A long batch interval: the batch is written when the test says so (SIGUSR1 flushes, then seals),
    # so the crash point is reached with every message already received.
    persist = start_persist(pipeline, crash_at, batch_interval="300")
    wait_ready(persist)
    pipeline.start("archive", "archive")
    feeder = Feeder(pipeline.persist_endpoint)
    try:
        feeder.send_events(gaps)
        feeder.send(records)
        feeder.send(records[:50])  # reconnect repeats
        wait_for(lambda: persist.metric("collector_messages_received_total") == len(records) + 50, 30, what="received")
        persist.popen.send_signal(signal.SIGUSR1)
        assert persist.popen.wait(timeout=30) == -signal.SIGKILL, persist.output()[-2000:]

        restarted = start_persist(pipeline, name="persist-restarted")
        wait_ready(restarted)
        pipeline.processes["persist"] = restarted
        feeder.send(records[-50:])  # more repeats after the restart
        wait_for(lambda: restarted.metric("collector_db_duplicates_skipped_total") >= 50
                 or restarted.metric("collector_messages_received_total") >= 100, 30, what="repeats reached persist")
        pipeline.seal_and_archive()
    finally:
        feeder.close()
    assert archived_counts(pipeline) == (len(records), len(records), len(gaps))


@pytest.mark.parametrize("crash_at", ["archive.after_upload", "archive.before_delete"])
def test_archive_killed_between_upload_and_delete_writes_no_second_copy(pipeline, crash_at):
    records = trade_records(SYMBOLS, PER_SYMBOL)
    persist = start_persist(pipeline)
    wait_ready(persist)
    feeder = Feeder(pipeline.persist_endpoint)
    try:
        feeder.send(records)
        wait_for(lambda: persist.metric("collector_db_snapshots_written_total") == len(records), 30, what="stored")
    finally:
        feeder.close()
    pipeline.env["COLLECTOR_CRASH_AT"] = crash_at
    archive = pipeline.start("archive", "archive")
    pipeline.env["COLLECTOR_CRASH_AT"] = ""
    persist.popen.send_signal(signal.SIGUSR1)
    assert archive.popen.wait(timeout=30) == -signal.SIGKILL, archive.output()[-2000:]
    outbox = pipeline.data_dir / "outbox"
    assert list(outbox.rglob("*.parquet")), "the file must stay in the outbox until it is verified"
    objects_before = sorted(p.relative_to(pipeline.archive_dir) for p in pipeline.archive_dir.rglob("*.parquet"))

    pipeline.processes["archive"] = pipeline.start("archive-restarted", "archive")
    wait_for(lambda: not list(outbox.rglob("*.parquet")), 30, what="outbox emptied")
    objects_after = sorted(p.relative_to(pipeline.archive_dir) for p in pipeline.archive_dir.rglob("*.parquet"))
    assert set(objects_before) <= set(objects_after)
    assert len(objects_after) == len(SYMBOLS)
    assert archived_counts(pipeline) == (len(records), len(records), 0)
