"""archive against a real S3 HTTP endpoint (moto's server on 127.0.0.1) and a local folder.

Sealed files are made by the real Store; archive runs as its own process. The S3 endpoint sits
behind a proxy the test can cut off, to prove files are kept, retried and uploaded once it returns.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.storage import Store, batch_from_wire
from tests.conftest import REPO, wait_for
from tests.e2e.feed import sample_gaps, trade_records
from tests.e2e.harness import Pipeline
from tests.e2e.s3 import CREDENTIALS, MotoServer, Proxy, s3_client

SYMBOLS = ["btcusdt", "ethusdt", "solusdt"]


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(moto):
    p = Proxy(moto.port)
    yield p
    p.close()


def seal_sample(data_dir: Path, server_name: str = "") -> list[Path]:
    """Outbox files sealed by the real Store from trade records of three symbols (and gap rows)."""
    records = trade_records(SYMBOLS, 200)
    headers = [list(h) for h, _ in records]
    table = pa.Table.from_batches([batch_from_wire(headers, b"".join(d for _, d in records))])
    store = Store(data_dir / "collector.duckdb")
    store.insert(table, sample_gaps(SYMBOLS), 1)
    files = store.seal(data_dir / "outbox", server_name, 3600)
    store.close()
    return files


def archive_env(pipeline: Pipeline, endpoint: str, bucket: str, region: str = "us-east-1") -> None:
    pipeline.env.update(CREDENTIALS, BUCKET_NAME=bucket, S3_ENDPOINT_URL=endpoint, AWS_REGION=region)


def run_once(pipeline: Pipeline) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli", "archive", "--once"], cwd=REPO, env=pipeline.env,
                          capture_output=True, text=True, timeout=120)


def object_sizes(client, bucket: str) -> dict[str, int]:
    listing = client.list_objects_v2(Bucket=bucket)
    return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


def test_once_uploads_verifies_and_deletes_into_a_new_bucket_in_its_region(tmp_path, proxy):
    pipeline = Pipeline(tmp_path)
    files = seal_sample(pipeline.data_dir, server_name="home-1")
    sizes = {f.relative_to(pipeline.data_dir / "outbox").as_posix(): f.stat().st_size for f in files}
    endpoint = f"http://127.0.0.1:{proxy.port}"
    archive_env(pipeline, endpoint, "research-archive", region="eu-west-1")

    result = run_once(pipeline)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not list((pipeline.data_dir / "outbox").rglob("*.parquet"))
    client = s3_client(endpoint, "eu-west-1")
    assert client.get_bucket_location(Bucket="research-archive")["LocationConstraint"] == "eu-west-1"
    assert object_sizes(client, "research-archive") == sizes
    assert all("/home-1/" in key for key in sizes)
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    assert secret not in result.stdout + result.stderr
    assert all(secret not in log.read_text() for log in (tmp_path / "logs").glob("*.jsonl"))

    query = subprocess.run([sys.executable, "-m", "stages.cli", "query",
                            "SELECT count(*) AS n, count(DISTINCT exchange_sequence_id || symbol) AS d FROM snapshots",
                            "--output", str(tmp_path / "n.csv")], cwd=REPO, env=pipeline.env, capture_output=True,
                           text=True, timeout=60)
    assert query.returncode == 0, query.stderr
    assert (tmp_path / "n.csv").read_text().splitlines()[1] == "600,600"


def test_s3_down_during_a_cycle_keeps_files_retries_and_uploads_once_back(tmp_path, proxy):
    pipeline = Pipeline(tmp_path)
    files = seal_sample(pipeline.data_dir)
    endpoint = f"http://127.0.0.1:{proxy.port}"
    archive_env(pipeline, endpoint, "outage-bucket")
    s3_client(endpoint).create_bucket(Bucket="outage-bucket")
    proxy.down()

    archive = pipeline.start("archive", "archive")
    try:
        wait_for(lambda: archive.metric("collector_s3_upload_retries_total") >= 2, 60, what="upload retries")
        assert len(list((pipeline.data_dir / "outbox").rglob("*.parquet"))) == len(files), "nothing may be deleted"
        proxy.up()
        wait_for(lambda: not list((pipeline.data_dir / "outbox").rglob("*.parquet")), 90, what="outbox emptied")
        assert archive.metric("collector_archives_completed_total") == len(files)
        assert archive.health()["status"] in ("healthy", "degraded")
    finally:
        pipeline.close()
    keys = object_sizes(s3_client(endpoint), "outage-bucket")
    assert sorted(keys) == sorted(f.relative_to(pipeline.data_dir / "outbox").as_posix() for f in files)


def test_a_failed_size_check_keeps_the_file(tmp_path, proxy, monkeypatch):
    """The verification step is real: a target reporting another size makes archive keep the file."""
    from pipeline import targets
    from stages import archive as archive_stage

    pipeline = Pipeline(tmp_path)
    files = seal_sample(pipeline.data_dir)
    target = targets.LocalTarget(str(tmp_path / "folder"))
    monkeypatch.setattr(target, "size", lambda key: 1)
    import threading

    archiver = archive_stage.Archiver(target, pipeline.data_dir / "outbox", threading.Event())
    assert archiver.cycle() is False
    assert len(list((pipeline.data_dir / "outbox").rglob("*.parquet"))) == len(files)


def test_local_folder_target(tmp_path):
    pipeline = Pipeline(tmp_path)
    files = seal_sample(pipeline.data_dir)
    expected = {f.relative_to(pipeline.data_dir / "outbox").as_posix(): f.read_bytes() for f in files}

    result = run_once(pipeline)

    assert result.returncode == 0, result.stdout + result.stderr
    archived = {p.relative_to(pipeline.archive_dir).as_posix(): p.read_bytes() for p in pipeline.archive_dir.rglob("*.parquet")}
    assert archived == expected
    assert not list((pipeline.data_dir / "outbox").rglob("*.parquet"))
