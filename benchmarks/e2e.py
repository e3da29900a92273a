"""One end-to-end run: load generator -> ``collector ingest`` -> ``collector check`` -> ``collector persist``
-> seal, every stage its own OS process started through the CLI (``python -m stages.cli ...``).

What a run measures (``run`` returns it as a dict):

* throughput: records committed to DuckDB per second over a window of ``duration`` seconds that
  starts ``warmup`` seconds after every stage is ready (``collector_db_snapshots_written_total`` of
  persist), beside ingest's receive rate (``collector_messages_received_total{stage="ingest"}``);
* drops: ``collector_messages_dropped_total`` of ingest and check over the whole run, and the backlog
  (records ingest handed on that persist has not committed) at the end of the window and its trend:
  a rate is *sustainable* when nothing was dropped and the backlog does not grow;
* CPU: each process's share of one core over the window (psutil), and what other processes on the
  machine used meanwhile (a noisy neighbour shows up there, not silently in the figures);
* memory: RSS of every process once a second: peak, steady (median of the last 30 s of the window)
  and growth (least-squares slope over the last 30 s, in MB per 30 s);
* the seal at the end (SIGUSR1): rows and seconds, and the rows in the outbox Parquet files, checked
  against what was committed (every key exactly once);
* latency (``fast_poll``): receipt (``timestamp_collector``, read back from the sealed Parquet files)
  to commit. persist's committed counter is polled at 20 Hz; the pipeline keeps order (one connection,
  FIFO ZeroMQ hops, batches committed whole), so the k-th smallest id is the k-th committed row, and
  its commit time lies between the poll before and the first poll that saw the counter exceed k. The
  reported figure uses the later poll (an upper bound, at most one poll interval + one HTTP round trip
  late); the lower bound is kept in the JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks import common

STREAMS = {"trades": "btcusdt@trade", "books": "btcusdt@depth20@100ms"}
DATA_TYPES = {"trades": "trade", "books": "orderbook"}
STAGES = ("ingest", "check", "persist")
PROCESSES = ("generator",) + STAGES


@dataclasses.dataclass
class Config:
    feed: str = "trades"  # trades | books
    rate: float = 0.0  # frames/s from the generator; 0 = as fast as ingest reads
    duration: float = 60.0  # the measured window, seconds
    warmup: float = 3.0
    batch_interval: float = 1.0
    transport: str = "tcp"  # tcp (the product's default) | ipc
    hwm: int = 1000  # the product's default ZMQ_HWM
    fast_poll: bool = False  # poll persist's counter at 20 Hz for the latency figure
    profile_dir: str | None = None  # py-spy record every process over the window
    profile_rate: int = 100
    keep: bool = False  # keep the run's folder (logs, outbox) for a post-mortem


class Run:
    def __init__(self, conf: Config):
        self.conf = conf
        self.folder = Path(tempfile.mkdtemp(prefix=f"bench-e2e-{conf.feed}-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.ps: dict[str, psutil.Process] = {}
        self.ports: dict[str, int] = {}
        self.samples: list[dict] = []
        self.fast: list[tuple[float, float, float]] = []  # (sent, received, committed)
        self._stop_sampling = threading.Event()
        self._stop_fast = threading.Event()
        self.errors: list[str] = []

    # -- processes
    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("EXCHANGE", "SYMBOLS", "FEEDS", "WS_URL", "ZMQ_PUSH", "ZMQ_PULL", "ZMQ_HWM", "METRICS_PORT",
                            "BUCKET_NAME", "SEAL_ON_EXIT")}
        env.update(
            BATCH_INTERVAL=str(self.conf.batch_interval),
            ARCHIVE_INTERVAL_SECS="3600",
            DATA_DIR=str(self.folder / "data"),
            LOG_DIR=str(self.folder / "logs"),
            LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.folder / f"{name}.out", "wb")
        process = subprocess.Popen(argv, cwd=common.REPO, env=self._env(), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs[name] = process
        self.ps[name] = psutil.Process(process.pid)
        return process

    def _endpoint(self, name: str) -> str:
        if self.conf.transport == "ipc":
            return f"ipc://{self.folder}/{name}.sock"
        return f"tcp://127.0.0.1:{common.free_port()}"

    def _start_generator(self) -> None:
        argv = [common.python(), "-m", "benchmarks.loadgen", "--rate", str(self.conf.rate),
                "--stats", str(self.folder / "generator.json")]
        process = subprocess.Popen(argv, cwd=common.REPO, stdout=subprocess.PIPE, stderr=open(self.folder / "generator.err", "wb"))
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"load generator did not start: {line!r}")
        self.procs["generator"] = process
        self.ps["generator"] = psutil.Process(process.pid)
        self.ports["generator"] = int(line.split()[1])

    def start(self) -> None:
        (self.folder / "data").mkdir()
        self._start_generator()
        hop1, hop2 = self._endpoint("ingest-check"), self._endpoint("check-persist")
        for stage in STAGES:
            self.ports[stage] = common.free_port()
        py = [common.python(), "-m", "stages.cli"]
        self._start("check", py + ["check", "--pull", hop1, "--push", hop2, "--hwm", str(self.conf.hwm),
                                   "--metrics-port", str(self.ports["check"])])
        self._start("persist", py + ["persist", "--pull", hop2, "--hwm", str(self.conf.hwm),
                                     "--metrics-port", str(self.ports["persist"])])
        for stage in ("check", "persist"):
            if not common.wait_until(lambda s=stage: common.ready(self.ports[s]), 60):
                raise RuntimeError(f"{stage} did not become ready: {self._tail(stage)}")
        self._start("ingest", py + ["ingest", "--exchange", "binance", "--symbols", "btcusdt",
                                    "--feeds", self.conf.feed if self.conf.feed == "trades" else "orderbook",
                                    "--ws-url", f"ws://127.0.0.1:{self.ports['generator']}",
                                    "--push", hop1, "--hwm", str(self.conf.hwm),
                                    "--metrics-port", str(self.ports["ingest"])])
        if not common.wait_until(lambda: common.ready(self.ports["ingest"]), 60):
            raise RuntimeError(f"ingest did not become ready: {self._tail('ingest')}")

    def _tail(self, name: str) -> str:
        try:
            return (self.folder / f"{name}.out").read_text(errors="replace")[-600:]
        except OSError:
            return ""

    # -- observation
    def counters(self) -> dict:
        out: dict = {"t": time.time()}
        for stage in STAGES:
            try:
                samples = common.scrape(self.ports[stage])
            except OSError:
                out[stage] = None
                continue
            out[stage] = {
                "received": common.metric(samples, "collector_messages_received_total", stage=stage),
                "dropped": common.metric(samples, "collector_messages_dropped_total", stage=stage),
                "committed": common.metric(samples, "collector_db_snapshots_written_total"),
                "duplicates": common.metric(samples, "collector_db_duplicates_skipped_total"),
                "seals": common.metric(samples, "collector_seals_completed_total"),
                "bad": common.metric(samples, "collector_bad_messages_total"),
            }
        return out

    def cpu_times(self) -> dict:
        out = {}
        for name, process in self.ps.items():
            try:
                times = process.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                out[name] = None
        system = psutil.cpu_times()
        out["_system_busy"] = system.user + system.system + system.nice + getattr(system, "irq", 0) + getattr(system, "softirq", 0)
        out["_t"] = time.monotonic()
        return out

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(1.0):
            sample = self.counters()
            sample["rss"] = {}
            for name, process in self.ps.items():
                try:
                    sample["rss"][name] = process.memory_info().rss
                except psutil.Error:
                    sample["rss"][name] = None
            self.samples.append(sample)

    def _fast_loop(self) -> None:
        port = self.ports["persist"]
        while not self._stop_fast.is_set():
            sent = time.time()
            try:
                samples = common.scrape(port)
            except OSError:
                time.sleep(0.05)
                continue
            self.fast.append((sent, time.time(), common.metric(samples, "collector_db_snapshots_written_total")))
            time.sleep(max(0.0, 0.05 - (time.time() - sent)))

    # -- the run
    def measure(self) -> dict:
        conf = self.conf
        sampler = threading.Thread(target=self._sample_loop, daemon=True)
        sampler.start()
        fast = None
        if conf.fast_poll:
            fast = threading.Thread(target=self._fast_loop, daemon=True)
            fast.start()
        time.sleep(conf.warmup)
        profilers = self._start_profilers() if conf.profile_dir else []
        a_counters, a_cpu = self.counters(), self.cpu_times()
        time.sleep(conf.duration)
        b_counters, b_cpu = self.counters(), self.cpu_times()
        for profiler in profilers:
            try:
                profiler.wait(timeout=conf.duration + 30)
            except subprocess.TimeoutExpired:
                profiler.kill()
        result = self._window(a_counters, b_counters, a_cpu, b_cpu)
        result["stop"] = self.stop()
        self._stop_fast.set()
        if fast:
            fast.join(5)
        self._stop_sampling.set()
        sampler.join(5)
        result["memory"] = self._memory(a_counters["t"], b_counters["t"])
        result["generator"] = self._generator_stats()
        result["outbox"] = self._outbox(a_counters["t"], b_counters["t"])
        result["errors"] = self.errors
        return result

    def _start_profilers(self) -> list[subprocess.Popen]:
        profile_dir = Path(self.conf.profile_dir)
        profile_dir.mkdir(parents=True, exist_ok=True)
        py_spy = shutil.which("py-spy")
        if not py_spy:
            self.errors.append("py-spy not found (pip install py-spy); no profile taken")
            return []
        out = []
        for name in PROCESSES:
            target = profile_dir / f"{self.conf.feed}-{name}.txt"
            argv = [py_spy, "record", "--pid", str(self.procs[name].pid), "--duration", str(int(self.conf.duration)),
                    "--rate", str(self.conf.profile_rate), "--nonblocking", "--threads", "--format", "raw", "--output", str(target)]
            out.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(profile_dir / f"{self.conf.feed}-{name}.err", "wb")))
        return out

    def _window(self, a: dict, b: dict, a_cpu: dict, b_cpu: dict) -> dict:
        seconds = b["t"] - a["t"]
        result: dict = {"feed": self.conf.feed, "rate_target": self.conf.rate, "window_seconds": seconds,
                        "batch_interval": self.conf.batch_interval, "transport": self.conf.transport}
        if any(a.get(s) is None or b.get(s) is None for s in STAGES):
            self.errors.append("a stage's /metrics did not answer during the window")
            return result
        committed = b["persist"]["committed"] - a["persist"]["committed"]
        received = b["ingest"]["received"] - a["ingest"]["received"]
        result["committed_rate"] = committed / seconds
        result["ingest_rate"] = received / seconds
        result["check_rate"] = (b["check"]["received"] - a["check"]["received"]) / seconds
        cpu_seconds = b_cpu["_t"] - a_cpu["_t"]
        result["cpu_share"] = {
            name: (b_cpu[name] - a_cpu[name]) / cpu_seconds if b_cpu.get(name) is not None and a_cpu.get(name) is not None else None
            for name in PROCESSES
        }
        ours = sum(v for v in result["cpu_share"].values() if v is not None)
        busy = (b_cpu["_system_busy"] - a_cpu["_system_busy"]) / cpu_seconds
        result["machine_busy_cores"] = busy
        result["foreign_cpu_cores"] = max(0.0, busy - ours)
        # the backlog during the window: records ingest handed on that persist has not committed yet
        points = []
        for sample in self.samples:
            if a["t"] <= sample["t"] <= b["t"] and all(sample.get(s) for s in STAGES):
                accepted = sample["ingest"]["received"] - sample["ingest"]["dropped"] - sample["check"]["dropped"]
                points.append((sample["t"] - a["t"], accepted - sample["persist"]["committed"]))
        result["backlog_end"] = points[-1][1] if points else None
        result["backlog_slope"] = common.slope(points)
        # growth = mean of the last third minus mean of the first third: averaging many samples cancels
        # the saw-tooth of batch commits (one BATCH_INTERVAL of records at a time)
        first = [b for t, b in points if t <= seconds / 3]
        last = [b for t, b in points if t >= seconds * 2 / 3]
        result["backlog_growth"] = (sum(last) / len(last) - sum(first) / len(first)) if first and last else None
        return result

    def stop(self) -> dict:
        """Stops the generator (ingest sees the connection end and flushes), lets every stage drain,
        seals (SIGUSR1), then stops the stages with SIGTERM."""
        out: dict = {}
        generator = self.procs["generator"]
        generator.send_signal(signal.SIGTERM)
        try:
            generator.wait(10)
        except subprocess.TimeoutExpired:
            generator.kill()
        history: list[tuple] = []

        def settled() -> bool:
            now = self.counters()
            i, c, p = now.get("ingest"), now.get("check"), now.get("persist")
            if not i or not c or not p:
                return False
            history.append((now["t"], i["received"]))
            stable = [r for t, r in history if t >= now["t"] - 0.5]
            return (len(stable) >= 3 and stable[0] == stable[-1]
                    and c["received"] >= i["received"] - i["dropped"]
                    and p["committed"] + p["duplicates"] >= c["received"] - c["dropped"])

        if not common.wait_until(settled, 60, 0.1):
            self.errors.append("the stages did not drain within 60 s after the generator stopped")
        last = self.counters()
        out["final"] = {"ingest": last.get("ingest"), "check": last.get("check"), "persist": last.get("persist")}
        # the seal: SIGUSR1, then wait for the seal counter
        persist_proc = self.procs["persist"]
        before = (last.get("persist") or {}).get("seals", 0)
        started = time.monotonic()
        persist_proc.send_signal(signal.SIGUSR1)
        sealed = common.wait_until(lambda: (self.counters().get("persist") or {}).get("seals", 0) > before, 300, 0.05)
        out["seal_seconds"] = time.monotonic() - started if sealed else None
        out["seal_rows"] = (last.get("persist") or {}).get("committed")
        if not sealed:
            self.errors.append("persist did not seal within 300 s of SIGUSR1")
        for name in STAGES:
            self.procs[name].send_signal(signal.SIGTERM)
        for name in STAGES:
            try:
                out[f"{name}_exit"] = self.procs[name].wait(30)
            except subprocess.TimeoutExpired:
                self.procs[name].kill()
                out[f"{name}_exit"] = "killed"
                self.errors.append(f"{name} did not stop within 30 s of SIGTERM")
        for name in STAGES:
            if out.get(f"{name}_exit") not in (0, None):
                self.errors.append(f"{name} exited with {out.get(f'{name}_exit')}: {self._tail(name)[-300:]}")
        return out

    def _memory(self, t_a: float, t_b: float) -> dict:
        out = {}
        window = min(30.0, (t_b - t_a))
        for name in PROCESSES:
            run = [(s["t"], s["rss"].get(name)) for s in self.samples if s["t"] <= t_b and s["rss"].get(name)]
            tail = [(t - t_a, rss / 2**20) for t, rss in run if t >= t_b - window]
            growth, error = common.slope_and_error(tail) or (None, None)
            out[name] = {
                "peak_mb": max(rss for _, rss in run) / 2**20 if run else None,
                "steady_mb": common.median(rss for _, rss in tail),
                "growth_mb_per_30s": growth * 30 if growth is not None else None,
                # two standard errors of the slope: a batching process's RSS saw-tooths by tens of MB
                "growth_noise_mb_per_30s": 2 * error * 30 if error is not None else None,
                "tail_seconds": window,
            }
        return out

    def _generator_stats(self) -> dict:
        try:
            return json.loads((self.folder / "generator.json").read_text())
        except (OSError, ValueError):
            self.errors.append("the load generator wrote no stats")
            return {}

    def _outbox(self, t_a: float, t_b: float) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted((self.folder / "data" / "outbox").rglob("*.parquet"))
        files = [f for f in files if "gaps" not in f.relative_to(self.folder / "data" / "outbox").parts[:1]]
        out: dict = {"files": len(files)}
        if not files:
            self.errors.append("no sealed Parquet file in the outbox")
            return out
        table = pa.concat_tables(pq.read_table(f, columns=["data_type", "exchange_sequence_id", "timestamp_collector"]) for f in files)
        out["rows"] = table.num_rows
        out["bytes"] = sum(f.stat().st_size for f in files)
        ids = table.column("exchange_sequence_id").to_pylist()
        out["distinct_keys"] = len(set(ids))
        if out["distinct_keys"] != out["rows"]:
            self.errors.append(f"outbox holds {out['rows']} rows but {out['distinct_keys']} distinct keys")
        if self.conf.fast_poll:
            out["latency"] = self._latency(ids, table.column("timestamp_collector").to_pylist(), t_a, t_b)
        return out

    def _latency(self, ids: list[str], collected: list[int], t_a: float, t_b: float) -> dict:
        order = sorted(range(len(ids)), key=lambda i: int(ids[i]))
        series = sorted(self.fast, key=lambda s: s[1])
        upper: list[float] = []
        lower: list[float] = []
        k = 0
        previous_sent = series[0][0] if series else 0.0
        for sent, received, committed in series:
            while k < committed and k < len(order):
                i = order[k]
                ts = collected[i] / 1e6
                if t_a <= ts <= t_b:
                    upper.append(received - ts)
                    lower.append(previous_sent - ts)
                k += 1
            previous_sent = sent
        upper.sort()
        lower.sort()
        gaps = [b[1] - a[1] for a, b in zip(series, series[1:])]
        return {
            "rows": len(upper),
            "p50": common.percentile(upper, 50), "p99": common.percentile(upper, 99), "max": upper[-1] if upper else None,
            "p50_lower": common.percentile(lower, 50), "p99_lower": common.percentile(lower, 99),
            "poll_interval_median": common.median(gaps), "poll_interval_max": max(gaps) if gaps else None,
            "polls": len(series),
        }

    def cleanup(self) -> None:
        for name, process in self.procs.items():
            if process.poll() is None:
                process.kill()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if not self.conf.keep:
            shutil.rmtree(self.folder, ignore_errors=True)


def run(conf: Config) -> dict:
    pipeline = Run(conf)
    started = time.monotonic()
    try:
        pipeline.start()
        up = time.monotonic()
        result = pipeline.measure()
        result["phase_seconds"] = {"start": up - started, "measure_and_stop": time.monotonic() - up}
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, not a crash of the suite
        result = {"feed": conf.feed, "rate_target": conf.rate, "errors": pipeline.errors + [f"{type(exc).__name__}: {exc}"]}
    finally:
        pipeline.cleanup()
    if conf.keep:
        result["folder"] = str(pipeline.folder)
    result["sustainable"] = sustainable(result)
    return result


def sustainable(result: dict) -> bool:
    """Nothing dropped, nothing lost, and the backlog does not grow (what persist has not committed).
    Sets ``result["unsustainable_reason"]`` when not."""
    reason = _unsustainable_reason(result)
    if reason:
        result["unsustainable_reason"] = reason
    return reason is None


def _unsustainable_reason(result: dict) -> str | None:
    stop = result.get("stop") or {}
    final = stop.get("final") or {}
    ingest, check = final.get("ingest") or {}, final.get("check") or {}
    if "committed_rate" not in result or not ingest or not check:
        return "run failed"
    dropped = ingest.get("dropped", 0) + check.get("dropped", 0)
    if dropped:
        return f"{dropped:,.0f} dropped"
    rate = result["committed_rate"] or 1.0
    allowance = rate * (result["batch_interval"] + 1.0) + 5000  # one batch in flight and one being inserted
    growth = result.get("backlog_growth")
    if result.get("window_seconds", 0) >= 15 and growth is not None:
        if growth > allowance:
            return f"backlog grew by {growth:,.0f} records over the window (persist falls behind)"
        return None
    backlog_end = result.get("backlog_end") or 0
    if backlog_end > 2 * allowance:
        return f"backlog {backlog_end:,.0f} records at the end of the window"
    return None
