"""AWS secrets never show: not on stdout/stderr, not in the JSON log files, not in /health or /metrics,
not in error messages, whatever happens to the upload (S3 unreachable, or a real S3 endpoint).

Every stage runs as a real process with a unique marker as AWS_SECRET_ACCESS_KEY, at debug log level
(the most talkative), and everything it showed is searched for the marker.
"""
from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from pipeline.config import SETTINGS
from pipeline.storage import Store, batch_from_wire
from tests.conftest import free_port, wait_for
from tests.e2e.feed import sample_gaps, trade_records
from tests.e2e.harness import Pipeline
from tests.e2e.s3 import MotoServer
from tests.security.helpers import cli, log_files, places_with

MARKER = f"MARKER-SECRET-{uuid.uuid4().hex}"
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIATESTSECURITY0001", "AWS_SECRET_ACCESS_KEY": MARKER, "LOG_LEVEL": "debug"}


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.close()


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, env=SECRETS)
    for variable in SETTINGS:
        if variable not in ("DATA_DIR", "ARCHIVE_URL", "LOG_DIR", "BATCH_INTERVAL", "LOG_LEVEL"):
            p.env.pop(variable, None)
    p.env.pop("AWS_SESSION_TOKEN", None)
    yield p
    p.close()


def seal(pipeline: Pipeline, symbols: list[str]) -> int:
    """Sealed Parquet files in the outbox, made by the real Store; how many."""
    records = trade_records(symbols, 50)
    table = pa.Table.from_batches([batch_from_wire([list(h) for h, _ in records], b"".join(d for _, d in records))])
    store = Store(pipeline.data_dir / "collector.duckdb")
    store.insert(table, sample_gaps(symbols), 1)
    files = store.seal(pipeline.data_dir / "outbox", "", 3600)
    store.close()
    return len(files)


def assert_marker_nowhere(pipeline: Pipeline, texts: dict[str, str]) -> None:
    texts = {**texts, **log_files(pipeline.root / "logs")}
    assert any(name.endswith(".jsonl") for name in texts), "no JSON log file was written: nothing was searched"
    for name, process in pipeline.processes.items():
        texts[f"{name} output"] = process.output()
    assert not places_with(MARKER, texts), "the AWS secret was shown"


def served(process) -> dict[str, str]:
    return {f"{process.name} /health": process.get("/health").decode(),
            f"{process.name} /metrics": process.get("/metrics").decode(),
            f"{process.name} /ready": process.get("/ready").decode()}


@pytest.mark.parametrize("target", ["closed-port", "moto"])
def test_archive_never_shows_the_secret(pipeline, target, request):
    if target == "moto":
        endpoint = f"http://127.0.0.1:{request.getfixturevalue('moto').port}"
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    pipeline.env.update(BUCKET_NAME="security-test", S3_ENDPOINT_URL=endpoint, AWS_REGION="eu-west-1")
    texts = {}

    assert seal(pipeline, ["btcusdt"])
    once = cli("archive", "--once", env=pipeline.env, cwd=pipeline.root)
    texts["archive --once stdout"], texts["archive --once stderr"] = once.stdout, once.stderr
    if target == "moto":
        assert once.returncode == 0, once.stdout + once.stderr
    else:
        assert once.returncode == 1 and "cannot reach" in once.stdout, once.stdout + once.stderr

    assert seal(pipeline, ["ethusdt"])
    archive = pipeline.start("archive", "archive")
    wait_for(lambda: archive.ready() or archive.popen.poll() is not None, 30, what="archive ready")
    assert archive.popen.poll() is None, archive.output()
    if target == "moto":
        wait_for(lambda: archive.metric("collector_archives_completed_total") >= 2, 60, what="files archived to moto")
    else:
        wait_for(lambda: archive.metric("collector_archive_failures_total") >= 2, 60, what="failed archive cycles")
        assert archive.health()["outbox_files"] > 0
    texts.update(served(archive))
    code, _ = archive.stop()
    assert code == 0
    assert_marker_nowhere(pipeline, texts)


def test_ingest_check_persist_never_show_the_secret(pipeline):
    _, ws_port = pipeline.simulator("binance", "--rate", "50", "--malformed-every", "20")
    pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
    pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
    pipeline.start("ingest", "ingest", "--exchange", "binance", "--symbols", "btcusdt", "--feeds", "orderbook,trades",
                   "--ws-url", f"ws://127.0.0.1:{ws_port}", "--push", pipeline.ingest_endpoint)
    for name in ("check", "persist", "ingest"):
        process = pipeline[name]
        wait_for(lambda p=process: p.ready() or p.popen.poll() is not None, 30, what=f"{name} ready")
        assert process.popen.poll() is None, process.output()
    wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") > 0, 60, what="records stored")
    texts = {}
    for name in ("check", "persist", "ingest"):
        texts.update(served(pipeline[name]))
    results = pipeline.stop_all()
    assert all(code == 0 for code, _ in results.values()), results
    assert_marker_nowhere(pipeline, texts)


def test_a_config_error_never_shows_the_secret(pipeline):
    for args in (["check", "--hwm", "0"], ["archive", "--metrics-port", "x"], ["persist", "--batch-interval", "-1"],
                 ["ingest", "--symbols", "btcusdt", "--exchange", "nowhere"]):
        result = cli(*args, env=pipeline.env, cwd=pipeline.root)
        assert result.returncode == 2, result.stderr
        assert MARKER not in result.stdout + result.stderr
