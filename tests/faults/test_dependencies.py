"""Faults of what the pipeline depends on: S3 slow, failing or gone for minutes; the outbox disk
full; the DuckDB file held by another process at start-up.

Each scenario runs the real stages as processes and proves: nothing lost (the archive ends holding
every record, verified), the fault visible in metrics and logs, and recovery without restarting the
stage once the fault clears (same pid). tests/e2e/test_archive_s3.py already covers a short S3 outage
during a cycle and a failed size check; this adds latency, HTTP errors, a long outage under a live
persist, a full disk and a locked database.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline import archive_views
from pipeline.storage import Store, batch_from_wire
from tests.conftest import REPO, wait_for
from tests.e2e.feed import Feeder, trade_records
from tests.e2e.harness import Pipeline
from tests.e2e.s3 import CREDENTIALS, MotoServer, Proxy, s3_client
from tests.faults.common import write_report
from tests.faults.s3faults import ErrorProxy, LatencyProxy

SYMBOLS = ["btcusdt", "ethusdt", "solusdt"]


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.close()


def seal_files(data_dir: Path, per_symbol: int, first_id: int = 1) -> list[Path]:
    """Outbox files sealed by the real Store (one per symbol)."""
    records = trade_records(SYMBOLS, per_symbol, first_id)
    table = pa.Table.from_batches([batch_from_wire([list(h) for h, _ in records], b"".join(d for _, d in records))])
    store = Store(data_dir / "collector.duckdb")
    store.insert(table, [], 1)
    files = store.seal(data_dir / "outbox", "", 3600)
    store.close()
    return files


def s3_env(pipeline: Pipeline, endpoint: str, bucket: str) -> None:
    pipeline.env.update(CREDENTIALS, BUCKET_NAME=bucket, S3_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1")


def archived_rows(endpoint: str, bucket: str) -> tuple[int, int]:
    """(rows, distinct keys) in the bucket, read through the archive's own views."""
    os.environ.update(CREDENTIALS)
    con = archive_views.connect(bucket=bucket, endpoint_url=endpoint)
    try:
        return con.execute("SELECT count(*), count(DISTINCT (exchange, symbol, data_type, exchange_sequence_id)) "
                           "FROM snapshots").fetchone()
    finally:
        con.close()


def outbox_files(pipeline: Pipeline) -> list[Path]:
    return sorted((pipeline.data_dir / "outbox").rglob("*.parquet"))


def test_a_slow_s3_still_gets_every_file_uploaded_and_verified(tmp_path, moto):
    """0.25 s before every 4 KB in both directions (a ~16 KB/s link, every request and answer delayed):
    slower, never a failure."""
    proxy = LatencyProxy(moto.port, delay=0.25, chunk=4096)
    endpoint = f"http://127.0.0.1:{proxy.port}"
    s3_client(f"http://127.0.0.1:{moto.port}").create_bucket(Bucket="slow-bucket")
    pipeline = Pipeline(tmp_path)
    files = seal_files(pipeline.data_dir, 3000)
    sizes = {f.relative_to(pipeline.data_dir / "outbox").as_posix(): f.stat().st_size for f in files}
    s3_env(pipeline, endpoint, "slow-bucket")
    archive = pipeline.start("archive", "archive")
    started = time.monotonic()
    try:
        wait_for(lambda: not outbox_files(pipeline), 240, interval=0.5, what="outbox emptied through the slow link")
        elapsed = time.monotonic() - started
        assert archive.metric("collector_archives_completed_total") == len(files)
        assert archive.metric("collector_s3_upload_failures_total") == 0
        upload_sum = archive.metric("collector_s3_upload_seconds_sum")
    finally:
        pipeline.close()
        proxy.close()
    objects = {o["Key"]: o["Size"] for o in s3_client(f"http://127.0.0.1:{moto.port}").list_objects_v2(Bucket="slow-bucket")["Contents"]}
    assert objects == sizes
    assert archived_rows(f"http://127.0.0.1:{moto.port}", "slow-bucket") == (3000 * len(SYMBOLS),) * 2
    figures = {"files": len(files), "bytes": sum(sizes.values()), "delay_per_4k_chunk_s": 0.25,
               "seconds_to_empty_outbox": round(elapsed, 1), "upload_seconds_sum": round(upload_sum, 1),
               "proxied_chunks": proxy.chunks, "lost": 0}
    print(figures)
    write_report("s3_slow", figures)


@pytest.mark.parametrize("methods", [("PUT",), ()], ids=["uploads-fail", "every-request-fails"])
def test_s3_answering_500_and_503_is_retried_counted_and_the_files_kept_until_uploaded(tmp_path, moto, methods):
    """Uploads (PUT) - or every request, the bucket check included - answered 503 SlowDown / 500
    InternalError for ~12 s, then served: retried with archive's backoff and counted, every file
    kept until uploaded and verified."""
    proxy = ErrorProxy(moto.port, methods=methods)
    bucket = "error-bucket-" + ("uploads" if methods else "all")
    endpoint = f"http://127.0.0.1:{proxy.port}"
    s3_client(f"http://127.0.0.1:{moto.port}").create_bucket(Bucket=bucket)
    pipeline = Pipeline(tmp_path)
    files = seal_files(pipeline.data_dir, 500)
    s3_env(pipeline, endpoint, bucket)
    proxy.failing.set()
    archive = pipeline.start("archive", "archive")
    try:
        wait_for(lambda: archive.metric("collector_s3_upload_retries_total")
                 + archive.metric("collector_archive_failures_total") >= 3, 60, what="retries or failed cycles counted")
        assert len(outbox_files(pipeline)) == len(files), "a file was deleted while S3 failed"
        assert archive.metric("collector_archives_completed_total") == 0
        pid = archive.popen.pid
        failing_for = 12.0
        time.sleep(max(0.0, failing_for - 3))
        proxy.failing.clear()
        cleared = time.monotonic()
        wait_for(lambda: not outbox_files(pipeline), 90, interval=0.2, what="outbox emptied once S3 answers again")
        recovery = time.monotonic() - cleared
        assert archive.popen.poll() is None and archive.popen.pid == pid, "recovered without a restart"
        retries = archive.metric("collector_s3_upload_retries_total")
        failures = archive.metric("collector_archive_failures_total")
        assert archive.metric("collector_archives_completed_total") == len(files)
        log = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("archive*.jsonl"))
        # the log names the store and carries S3's own message (s3fs turns the HTTP status into an errno)
        assert ("retry" in log or "cannot reach" in log) and "injected by the test" in log
        assert "Traceback" not in archive.output()
    finally:
        pipeline.close()
        proxy.close()
    assert archived_rows(f"http://127.0.0.1:{moto.port}", bucket) == (500 * len(SYMBOLS),) * 2
    figures = {"files": len(files), "http_errors_served": proxy.failed, "retries_counted": retries,
               "archive_failures_counted": failures, "seconds_to_empty_outbox_after_errors_stop": round(recovery, 1),
               "lost": 0}
    print(figures)
    write_report(f"s3_errors_{'uploads' if methods else 'every_request'}", figures)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_s3_down_for_minutes_under_a_live_persist_loses_nothing(tmp_path, moto):
    """persist keeps sealing (SIGUSR1 every 20 s) into the outbox while S3 is unreachable for
    ``FAULTS_S3_DOWN_SECS`` (180); archive keeps every file and empties the outbox once S3 is back."""
    down_secs = float(os.environ.get("FAULTS_S3_DOWN_SECS", "180"))
    proxy = Proxy(moto.port)
    endpoint = f"http://127.0.0.1:{proxy.port}"
    s3_client(endpoint).create_bucket(Bucket="outage-bucket")
    pipeline = Pipeline(tmp_path)
    s3_env(pipeline, endpoint, "outage-bucket")
    persist = pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
    archive = pipeline.start("archive", "archive")
    for process in (persist, archive):
        wait_for(process.ready, 30, what=f"{process.name} ready")
    feeder = Feeder(pipeline.persist_endpoint)
    sent = 0
    try:
        def feed_and_seal() -> None:
            nonlocal sent
            feeder.send(trade_records(SYMBOLS, 200, first_id=1 + sent))
            sent += 200
            wait_for(lambda: persist.metric("collector_db_snapshots_written_total") >= sent * len(SYMBOLS), 30, what="stored")
            seals = persist.metric("collector_seals_completed_total")
            persist.popen.send_signal(signal.SIGUSR1)
            wait_for(lambda: persist.metric("collector_seals_completed_total") > seals, 30, what="seal")

        feed_and_seal()
        wait_for(lambda: not outbox_files(pipeline), 60, what="first files archived")
        proxy.down()
        down_at = time.monotonic()
        max_waiting = 0
        while time.monotonic() - down_at < down_secs:
            feed_and_seal()
            max_waiting = max(max_waiting, len(outbox_files(pipeline)))
            time.sleep(min(20.0, max(0.0, down_secs - (time.monotonic() - down_at))))
        waiting = len(outbox_files(pipeline))
        assert waiting >= len(SYMBOLS) * 2, "files must wait in the outbox while S3 is down"
        retries, failures = (archive.metric("collector_s3_upload_retries_total"),
                             archive.metric("collector_s3_upload_failures_total"))
        failed_cycles = archive.metric("collector_archive_failures_total")
        assert retries > 0 and failures > 0
        proxy.up()
        back_at = time.monotonic()
        wait_for(lambda: not outbox_files(pipeline), 180, interval=0.5, what="outbox emptied after the outage")
        recovery = time.monotonic() - back_at
        assert archive.popen.poll() is None and persist.popen.poll() is None
    finally:
        feeder.close()
        pipeline.close()
        proxy.close()
    assert archived_rows(f"http://127.0.0.1:{moto.port}", "outage-bucket") == (sent * len(SYMBOLS),) * 2
    figures = {"down_secs": down_secs, "records": sent * len(SYMBOLS), "files_waiting_at_end_of_outage": waiting,
               "upload_retries": retries, "upload_failures": failures, "archive_failures": failed_cycles,
               "seconds_to_empty_outbox_after_s3_back": round(recovery, 1), "lost": 0}
    print(figures)
    write_report("s3_down_minutes", figures)


# -- the outbox disk fills up ------------------------------------------------------------------------
def mount_small_fs(target: Path, size: str = "2m") -> tuple[str, callable]:
    """A tmpfs of ``size`` at ``target`` (or, where tmpfs mounts are refused, an ext4 loop device);
    skips with the reason when neither is possible. Returns (kind, unmount)."""
    target.mkdir(parents=True, exist_ok=True)
    errors = []
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True)
    if result.returncode == 0:
        return "tmpfs", lambda: subprocess.run(["umount", "-l", str(target)], check=False)
    errors.append(f"tmpfs: {result.stderr.strip() or result.returncode}")
    image = target.parent / "outbox.img"
    steps = [["truncate", "-s", "4M", str(image)], ["mkfs.ext4", "-q", "-F", str(image)],
             ["mount", "-o", "loop", str(image), str(target)]]
    for step in steps:
        try:
            result = subprocess.run(step, capture_output=True, text=True)
        except FileNotFoundError as exc:
            result = subprocess.CompletedProcess(step, 127, "", str(exc))
        if result.returncode != 0:
            errors.append(f"{step[0]}: {result.stderr.strip() or result.returncode}")
            pytest.skip("cannot make a small filesystem for the outbox: " + "; ".join(errors))
    return "loop ext4", lambda: subprocess.run(["umount", "-l", str(target)], check=False)


def fill(directory: Path) -> Path:
    """Fills the filesystem of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_outbox_disk_fails_the_seal_cleanly_and_the_next_seal_succeeds_without_a_restart(tmp_path):
    pipeline = Pipeline(tmp_path)
    outbox = pipeline.data_dir / "outbox"
    kind, unmount = mount_small_fs(outbox)
    try:
        persist = pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
        wait_for(persist.ready, 30, what="persist ready")
        pid = persist.popen.pid
        filler = fill(outbox)
        feeder = Feeder(pipeline.persist_endpoint)
        try:
            feeder.send(trade_records(SYMBOLS, 2000))
            wait_for(lambda: persist.metric("collector_db_snapshots_written_total") == 2000 * len(SYMBOLS), 30, what="stored")
            persist.popen.send_signal(signal.SIGUSR1)
            wait_for(lambda: persist.metric("collector_db_insert_errors_total", error_type="io") >= 1, 30,
                     what="the failed seal counted as an io error")
            assert persist.metric("collector_seals_completed_total") == 0
            # records keep coming while the disk is full: stored in DuckDB as usual
            feeder.send(trade_records(SYMBOLS, 1000, first_id=2001))
            wait_for(lambda: persist.metric("collector_db_snapshots_written_total") == 3000 * len(SYMBOLS), 30,
                     what="inserts go on while the outbox is full")
            persist.popen.send_signal(signal.SIGUSR1)  # a second seal on a full disk: fails again, cleanly
            wait_for(lambda: persist.metric("collector_db_insert_errors_total", error_type="io") >= 2, 30, what="second failure")
            assert not list(outbox.rglob("*.parquet")), "no half-written file may look sealed"
            log = persist.output()
            assert "seal failed" in log and "no space left" in log.lower(), log[-2000:]
            assert "Traceback" not in log

            filler.unlink()  # space comes back
            persist.popen.send_signal(signal.SIGUSR1)
            wait_for(lambda: persist.metric("collector_seals_completed_total") >= 1, 30, what="seal after space is back")
            assert persist.popen.poll() is None and persist.popen.pid == pid, "recovered without a restart"
            leftovers = [p.name for p in outbox.rglob("*") if p.is_file() and not p.name.endswith(".parquet")]
            archive = pipeline.start("archive", "archive")
            wait_for(lambda: not list(outbox.rglob("*.parquet")), 30, what="archive emptied the outbox")
            archive.stop()
        finally:
            feeder.close()
        persist.stop()
    finally:
        pipeline.close()
        unmount()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    rows, distinct = con.execute("SELECT count(*), count(DISTINCT (symbol, exchange_sequence_id)) FROM snapshots").fetchone()
    left = duckdb.connect(str(pipeline.data_dir / "collector.duckdb"), read_only=True).execute(
        "SELECT count(*) FROM snapshots").fetchone()[0]
    figures = {"filesystem": f"{kind} 2 MB", "records": 3000 * len(SYMBOLS), "failed_seals": 2, "archived": rows,
               "left_in_duckdb": left, "leftover_temporary_files": leftovers, "lost": 3000 * len(SYMBOLS) - rows - left}
    print(figures)
    write_report("outbox_disk_full", figures)
    assert rows == distinct == 3000 * len(SYMBOLS) and left == 0, "nothing lost, nothing twice"
    assert not leftovers, f"temporary files of the failed seals left in the outbox: {leftovers}"


# -- the DuckDB file is held by another process ------------------------------------------------------
def test_persist_refuses_a_locked_duckdb_file_with_one_clear_line(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "collector.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(database)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "PYTHONPATH": str(REPO), "DATA_DIR": str(data_dir), "LOG_DIR": str(tmp_path / "logs"),
               "METRICS_PORT": "0"}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "stages.cli", "persist"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    output = (result.stdout + result.stderr).strip()
    lines = output.splitlines()
    print(output)
    write_report("duckdb_locked", {"exit_status": result.returncode, "seconds": round(elapsed, 2), "output": lines})
    assert result.returncode != 0
    assert "Traceback" not in output
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    assert "lock" in lines[0].lower() and str(database) in lines[0]
    assert f"PID {holder.pid}" in lines[0] or str(holder.pid) in lines[0], "the line should name the holder"
