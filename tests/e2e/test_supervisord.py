"""The shipped process model under real supervisord: every stage healthy, a SIGKILLed stage restarted,
and a clean stop that leaves every record flushed."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import duckdb
import orjson
import pytest

from pipeline import archive_views, topology
from tests.conftest import REPO, wait_for

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


def ports_free() -> list[int]:
    busy = []
    for port in [s.metrics_port for s in topology.stages(EXCHANGES)] + [5555, 5556] + [topology.SIMULATOR_PORTS[e] for e in EXCHANGES]:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@pytest.fixture
def run(tmp_path):
    assert not ports_free(), f"ports of the shipped topology are in use: {ports_free()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATA_DIR": str(tmp_path / "data"), "ARCHIVE_URL": str(tmp_path / "archive"),
           "LOG_DIR": str(tmp_path / "logs"), "BATCH_INTERVAL": "1"}
    env.pop("BUCKET_NAME", None)
    out = open(tmp_path / "run.out", "wb")
    process = subprocess.Popen([sys.executable, "-m", "stages.cli", "run", "--simulate", "--exchanges", ",".join(EXCHANGES)],
                               cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    yield process, env, tmp_path
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    out.close()


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
