"""Runs the real pipeline for tests: every stage and the simulator as OS processes through the CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, free_port, wait_for

SHUTDOWN_BUDGET = {"ingest": 10, "check": 10, "persist": 15, "archive": 5, "simulate": 5}


class Process:
    def __init__(self, name: str, args: list[str], cwd: Path, env: dict, metrics_port: int | None):
        self.name, self.args, self.metrics_port = name, args, metrics_port
        self.log_path = cwd / f"{name}.out"
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "stages.cli", *args], cwd=cwd, env=env,
                                      stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def kind(self) -> str:
        return self.args[0]

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=2) as response:
            return response.read()

    def health(self) -> dict:
        return orjson.loads(self.get("/health"))

    def ready(self) -> bool:
        try:
            return self.get("/ready") is not None
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Signals the process and waits for it within its shutdown budget (+2 s slack)."""
        started = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout=SHUTDOWN_BUDGET.get(self.kind, 10) + 2)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self.log.close()


class Pipeline:
    """Ports, folders and processes of one pipeline under test; ``close`` always cleans up."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = root
        self.data_dir = root / "data"
        self.archive_dir = root / "archive"
        self.ingest_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.persist_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "DATA_DIR": str(self.data_dir),
                    "ARCHIVE_URL": str(self.archive_dir), "LOG_DIR": str(root / "logs"), "BATCH_INTERVAL": "0.5",
                    **(env or {})}
        if "BUCKET_NAME" not in (env or {}):
            self.env.pop("BUCKET_NAME", None)
        self.processes: dict[str, Process] = {}

    def start(self, name: str, *args: str, metrics: bool = True) -> Process:
        port = free_port() if metrics else None
        full = list(args) + (["--metrics-port", str(port)] if metrics else [])
        process = Process(name, full, self.root, self.env, port)
        self.processes[name] = process
        return process

    def simulator(self, exchange: str, *options: str, name: str | None = None) -> tuple[Process, int]:
        port = free_port()
        process = self.start(name or f"simulate-{exchange}", "simulate", "--exchange", exchange, "--port", str(port),
                             *options, metrics=False)
        wait_for(lambda: _listening(port) or process.popen.poll() is not None, 20, what=f"simulator on {port}")
        assert process.popen.poll() is None, process.output()
        return process, port

    def stages(self, exchange: str, ws_port: int, symbols: str, feeds: str = "orderbook,trades",
               ingest_args: tuple[str, ...] = ()) -> None:
        self.start("check", "check", "--pull", self.ingest_endpoint, "--push", self.persist_endpoint)
        self.start("persist", "persist", "--pull", self.persist_endpoint)
        self.start("archive", "archive")
        self.start(f"ingest-{exchange}", "ingest", "--exchange", exchange, "--symbols", symbols, "--feeds", feeds,
                   "--ws-url", f"ws://127.0.0.1:{ws_port}", "--push", self.ingest_endpoint, *ingest_args)
        for process in self.processes.values():
            if process.metrics_port:
                wait_for(lambda p=process: p.ready() or p.popen.poll() is not None, 30, what=f"{process.name} ready")
                assert process.popen.poll() is None, f"{process.name} exited:\n{process.output()}"

    def __getitem__(self, name: str) -> Process:
        return self.processes[name]

    def seal_and_archive(self, timeout: float = 30) -> None:
        """SIGUSR1 to persist, then waits until archive emptied the outbox."""
        sealed_before = self["persist"].metric("collector_seals_completed_total")
        self["persist"].popen.send_signal(signal.SIGUSR1)
        wait_for(lambda: self["persist"].metric("collector_seals_completed_total") > sealed_before, timeout, what="seal")
        outbox = self.data_dir / "outbox"
        wait_for(lambda: not list(outbox.rglob("*.parquet")), timeout, what="outbox emptied by archive")

    def stop_all(self) -> dict[str, tuple[int, float]]:
        """SIGTERM to every process at once, then each one's exit code and time to exit."""
        order = [p for p in self.processes.values() if p.popen.poll() is None]
        started = time.monotonic()
        for process in order:
            process.popen.send_signal(signal.SIGTERM)
        results = {}
        for process in order:
            budget = SHUTDOWN_BUDGET.get(process.kind, 10)
            try:
                code = process.popen.wait(timeout=max(0.1, started + budget + 2 - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                code = process.popen.wait()
            results[process.name] = (code, time.monotonic() - started)
        return results

    def close(self) -> None:
        for process in self.processes.values():
            process.kill()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_manifest(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
