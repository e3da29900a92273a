"""The shipped process model under real supervisord: every stage healthy, a SIGKILLed stage restarted,
and a clean stop that leaves every record flushed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import duckdb
import orjson
import pytest

from pipeline import archive_views, topology
from tests.conftest import REPO, collector_run, wait_for

EXCHANGES = ("binance", "okx")


def status(env: dict) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "stages.cli", "status"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=30)
    return result.returncode, result.stdout


def health(stage: str) -> dict:
    import urllib.request

    port = next(s.metrics_port for s in topology.stages(EXCHANGES) if s.name == stage)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        return orjson.loads(response.read())


@pytest.fixture
def run(tmp_path):
    with collector_run(tmp_path, EXCHANGES) as (process, env):
        yield process, env, tmp_path


def test_supervisord_restarts_a_killed_stage_and_stops_with_every_record_flushed(run):
    process, env, root = run
    try:
        wait_for(lambda: status(env)[0] == 0, 120, interval=0.5, what="every stage healthy")
    finally:
        code, table = status(env)
        print(table, (root / "run.out").read_text()[-3000:])
    for stage in topology.stages(EXCHANGES):
        assert stage.name in table
    wait_for(lambda: all(health(s.name)["status"] == "healthy" for s in topology.stages(EXCHANGES)), 60, what="all healthy")

    victim = health("ingest-okx")["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: health("ingest-okx")["pid"] != victim, 60, interval=0.5, what="ingest-okx restarted")
    wait_for(lambda: health("ingest-okx")["status"] == "healthy" and status(env)[0] == 0, 60, interval=0.5,
             what="healthy again")
    wait_for(lambda: health("persist")["uptime_seconds"] >= 0 and health("check")["records_per_second"] > 0, 30,
             what="records flowing")

    process.send_signal(signal.SIGTERM)
    assert process.wait(90) == 0, (root / "run.out").read_text()[-3000:]

    check_log = [orjson.loads(line) for log in (root / "logs").glob("check.*.jsonl") for line in log.read_text().splitlines()]
    final = [entry["record"] for entry in check_log if "forwarded" in entry["text"]][-1]
    forwarded, duplicates = (int(x) for x in final["message"].split("forwarded ")[1].replace("(", "").split()[:3:2])
    con = duckdb.connect(str(root / "data" / "collector.duckdb"), read_only=True)
    in_duckdb = con.execute("SELECT count(*) FROM snapshots").fetchone()[0]
    con.close()
    archived = archive_views.connect(archive_url=str(root / "archive")).execute("SELECT count(*) FROM snapshots").fetchone()[0]
    assert forwarded > 0
    assert in_duckdb + archived == forwarded - duplicates
    stopped = [entry for log in (root / "logs").glob("*.jsonl") for entry in map(orjson.loads, log.read_text().splitlines())
               if entry["text"].rstrip().endswith("stopped") or "stopped;" in entry["text"]]
    assert {e["record"]["extra"]["stage"] for e in stopped} >= {"check", "persist", "archive", "ingest-binance", "ingest-okx"}
