"""archive: sealed outbox files -> S3 or a local folder, verified, and only then deleted locally.

Watches the outbox, uploads each ``*.parquet`` within a second or so of its appearance (retrying
after 1, 2, 4, 8, 16 s), checks that the target holds an object of the same size, and deletes the
local file only then. A file whose upload or check failed stays for the next cycle. The outbox path
of a file is its key, so uploading it again writes the same object, never a second copy.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import click
import pyarrow.parquet as pq
import tenacity
from loguru import logger

from pipeline import config as cfg
from pipeline import health, logs, metrics
from pipeline.crashpoints import crash_point
from pipeline.targets import LocalTarget, S3Target, from_config

SCAN_EVERY_SECS = 1.0
CYCLE_TIMEOUT_SECS = 300.0
RETRY_WAITS = (1, 2, 4, 8, 16)


class Archiver:
    def __init__(self, target: LocalTarget | S3Target, outbox: Path, stop: threading.Event):
        self.target, self.outbox, self.stop = target, outbox, stop
        self.prepared = False
        self.progress = lambda: None  # called while a cycle works, so a long upload is not a stall

    def pending(self) -> list[Path]:
        return sorted(self.outbox.rglob("*.parquet")) if self.outbox.exists() else []

    def cycle(self) -> bool:
        """One pass over the outbox; True when every file found was archived and deleted."""
        started = time.monotonic()
        try:
            if not self.prepared:
                self.target.prepare()
                self.prepared = True
            files = self.pending()
        except Exception as exc:  # noqa: BLE001 - the target or the outbox is unreachable: next cycle
            metrics.ARCHIVE_FAILURES.labels(stage="fetch").inc()
            logger.warning("archive: cannot reach {}: {}", self.target.description, _first_line(exc))
            return False
        metrics.OUTBOX_FILES.set(len(files))
        all_done = True
        for path in files:
            if self.stop.is_set():
                return False
            if time.monotonic() - started > CYCLE_TIMEOUT_SECS:
                metrics.ARCHIVE_FAILURES.labels(stage="timeout").inc()
                logger.warning("archive: cycle took over {:.0f}s; the rest waits for the next one", CYCLE_TIMEOUT_SECS)
                return False
            all_done &= self.archive(path)
            self.progress()
        metrics.OUTBOX_FILES.set(len(self.pending()))
        return all_done

    def archive(self, path: Path) -> bool:
        key = path.relative_to(self.outbox).as_posix()
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:  # noqa: BLE001 - an unreadable file is kept for a person to look at
            metrics.ARCHIVE_FAILURES.labels(stage="parquet").inc()
            logger.error("archive: {} is not a readable Parquet file, kept: {}", path, _first_line(exc))
            return False
        local_size = path.stat().st_size
        started = time.perf_counter()
        try:
            self._upload(path, key)
        except Exception as exc:  # noqa: BLE001
            metrics.S3_UPLOAD_FAILURES.inc()
            metrics.ARCHIVE_FAILURES.labels(stage="upload").inc()
            logger.warning("archive: upload of {} failed after retries, kept: {}", key, _first_line(exc))
            self.prepared = False  # the bucket may be gone (a new endpoint, a wiped store): check it again
            return False
        metrics.S3_UPLOAD_SECONDS.observe(time.perf_counter() - started)
        crash_point("archive.after_upload")
        try:
            remote_size = self.target.size(key)
        except Exception as exc:  # noqa: BLE001
            metrics.ARCHIVE_FAILURES.labels(stage="verify_head").inc()
            logger.warning("archive: cannot check {}, kept: {}", key, _first_line(exc))
            return False
        if remote_size is None:
            metrics.ARCHIVE_FAILURES.labels(stage="verify_head").inc()
            logger.warning("archive: {} is not in {} after upload, kept", key, self.target.description)
            return False
        if remote_size != local_size:
            metrics.ARCHIVE_FAILURES.labels(stage="verify_size").inc()
            logger.warning("archive: {} has {} bytes there, {} here; kept", key, remote_size, local_size)
            return False
        crash_point("archive.before_delete")
        path.unlink()
        metrics.ARCHIVES_COMPLETED.inc()
        metrics.SNAPSHOTS_ARCHIVED.inc(rows)
        logger.info("archived {} ({} rows, {} bytes)", key, rows, local_size)
        return True

    def _upload(self, path: Path, key: str) -> None:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            metrics.S3_UPLOAD_RETRIES.inc()
            self.progress()
            logger.warning("archive: upload of {} failed ({}), retry {} in {}s", key,
                           _first_line(state.outcome.exception()), state.attempt_number, state.next_action.sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(len(RETRY_WAITS)) | tenacity.stop_any(lambda _: self.stop.is_set()),
            wait=tenacity.wait_exponential(multiplier=RETRY_WAITS[0], max=RETRY_WAITS[-1]),
            sleep=lambda seconds: self.stop.wait(seconds),
            before_sleep=before_sleep,
            reraise=True,
        )
        retrying(self.target.put, path, key)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


@click.command()
@cfg.options("DATA_DIR", "BUCKET_NAME", "ARCHIVE_URL", "AWS_REGION", "S3_ENDPOINT_URL", "METRICS_PORT",
             "METRICS_HOST", "LOG_LEVEL", "LOG_DIR", "LOG_RETENTION_DAYS")
@click.option("--once", is_flag=True, help="archive what is in the outbox and exit (0 only if all verified)")
def command(once: bool, **raw: str | None) -> None:
    """The archiving stage: upload sealed files, verify, then delete them locally."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    conf = cfg.load(raw)
    logs.setup("archive", conf.log_level, conf.log_dir, conf.log_retention_days)
    target = from_config(conf.bucket_name, conf.archive_url, conf.aws_region, conf.s3_endpoint_url)
    archiver = Archiver(target, Path(conf.data_dir) / "outbox", stop)
    metrics.register(metrics.ARCHIVE)
    if once:
        ok = archiver.cycle()
        sys.exit(0 if ok else 1)

    state = health.Health("archive")
    server = health.serve(state, conf.metrics_host, conf.metrics_port)
    state.details = lambda: {"outbox_files": len(archiver.pending())}
    archiver.progress = state.progressed
    state.ready = True
    logger.info("archive: {} -> {}", archiver.outbox, target.description)
    while not stop.is_set():
        archiver.cycle()
        state.progressed()
        stop.wait(SCAN_EVERY_SECS)
    server.shutdown()
    logger.info("archive: stopped")
