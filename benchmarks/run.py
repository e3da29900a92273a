"""The whole benchmark suite, one command, one table:

    python -m benchmarks.run [--runs 3] [--duration 60] [--quick] [--json FILE] [--profile DIR]

Prints the machine and the versions, then one table: every figure is the median of ``--runs`` runs
(with the range over the runs beside it), its target where the project set one, and whether it is
met. Progress goes to stderr; ``--json`` saves every run's raw numbers. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common, e2e, micro
from benchmarks.common import median

FEEDS = ("trades", "books")
EXCHANGES = ("binance", "coinbase", "upbit", "okx", "bybit")
PROCESSES = ("generator", "ingest", "check", "persist")
ZMQ_CASES = (("single", 172), ("single", 1372), ("batched", 172), ("batched", 1372))
TARGETS = {
    "e2e.trades.rate": 60_000, "e2e.books.rate": 25_000, "ratio": 0.7, "parse.trade": 250_000,
    "persist": 150_000, "rss_growth_mb": 1.0,
}
FULL = dict(runs=3, duration=60.0, warmup=3.0, ceiling_seconds=10.0, zmq_seconds=5.0, micro_seconds=1.0,
            persist_keys=3_000_000, persist_batch=60_000, archive_extra_mb=32, probe_seconds=20.0, search_steps=5,
            book_rows=300_000, book_batch=15_000, hour_keys=20_000_000)
QUICK = dict(runs=1, duration=3.0, warmup=1.0, ceiling_seconds=0.5, zmq_seconds=0.5, micro_seconds=0.1,
             persist_keys=60_000, persist_batch=20_000, archive_extra_mb=2, probe_seconds=2.0, search_steps=1,
             book_rows=20_000, book_batch=10_000, hour_keys=100_000)


def code_state() -> dict:
    """The code being measured: git HEAD, uncommitted changes and a hash of stages/ and pipeline/ as they are."""
    import hashlib

    digest = hashlib.sha1()
    for folder in ("stages", "pipeline", "benchmarks"):
        for path in sorted((common.REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(common.REPO)).encode() + b"\0" + path.read_bytes())

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=common.REPO, capture_output=True, timeout=10).stdout.decode().strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = [line for line in git("status", "--porcelain", "--", "stages", "pipeline").splitlines() if line.strip()]
    return {"head": git("rev-parse", "--short", "HEAD") or "?", "uncommitted_files": len(dirty), "hash": digest.hexdigest()[:12]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring -------------------------------------------------------------------------------------------

def await_quiet(s: dict) -> None:
    """With --wait-quiet N: waits up to N s until the machine is nearly idle (other people's work)."""
    limit = s.get("wait_quiet") or 0.0
    if limit <= 0:
        return
    import psutil

    deadline = time.monotonic() + limit
    announced = False
    while True:
        busy = psutil.cpu_percent(interval=1.0) / 100.0 * (os.cpu_count() or 1)
        if busy < 0.3 or time.monotonic() >= deadline:
            if announced:
                log(f"  machine busy {busy:.2f} cores; going on")
            return
        if not announced:
            log(f"  waiting up to {limit:.0f}s for a quieter machine (busy {busy:.2f} cores)")
            announced = True


def measure_ceilings(s: dict) -> dict:
    import psutil

    out: dict = {"ws": {}, "zmq": {}}
    for feed in FEEDS:
        generator = subprocess.Popen([common.python(), "-m", "benchmarks.loadgen"], cwd=common.REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            port = int(generator.stdout.readline().split()[1])
            gen = psutil.Process(generator.pid)
            runs = []
            for i in range(s["runs"]):
                for method in ("recv", "recv_data"):
                    log(f"ceiling: bare websocket-client {method}() on {feed}, run {i + 1}/{s['runs']}")
                    argv = [common.python(), "-m", "benchmarks.ceiling", "ws", "--url", f"ws://127.0.0.1:{port}/stream",
                            "--stream", e2e.STREAMS[feed], "--seconds", str(s["ceiling_seconds"])]
                    if method == "recv_data":
                        argv.append("--recv-data")
                    await_quiet(s)
                    cpu0, t0 = sum(gen.cpu_times()[:2]), time.monotonic()
                    result = _json_subprocess(argv, s["ceiling_seconds"] + 60)
                    result["generator_cpu_share"] = (sum(gen.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
                    result["method"] = method
                    runs.append(result)
            out["ws"][feed] = runs
        finally:
            generator.send_signal(signal.SIGTERM)
            generator.wait(10)
    for mode, size in ZMQ_CASES:
        runs = []
        for i in range(s["runs"]):
            log(f"ceiling: bare ZeroMQ chain, {mode}, {size} B records, run {i + 1}/{s['runs']}")
            await_quiet(s)
            runs.append(_json_subprocess([common.python(), "-m", "benchmarks.ceiling", "zmq", "--mode", mode, "--size", str(size),
                                          "--seconds", str(s["zmq_seconds"]), "--transport", s["transport"]],
                                         s["zmq_seconds"] + 90))
        out["zmq"][f"{mode}.{size}"] = runs
    return out


def _json_subprocess(argv: list[str], timeout: float) -> dict:
    try:
        done = subprocess.run(argv, cwd=common.REPO, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s: {' '.join(argv[2:5])}"}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"}


def _e2e(s: dict, feed: str, rate: float, duration: float, fast_poll: bool = False, profile: str | None = None) -> dict:
    conf = e2e.Config(feed=feed, rate=rate, duration=duration, warmup=s["warmup"], batch_interval=s["batch_interval"],
                      transport=s["transport"], fast_poll=fast_poll, profile_dir=profile, keep=s["keep"])
    await_quiet(s)
    result = e2e.run(conf)
    log(f"  -> committed {result.get('committed_rate', 0):,.0f}/s, ingest {result.get('ingest_rate', 0):,.0f}/s, "
        f"sustainable {result['sustainable']}, others used {result.get('foreign_cpu_cores', 0):.2f} cores"
        + (f", errors: {result['errors']}" if result.get("errors") else ""))
    return result


def measure_e2e(s: dict) -> dict:
    out: dict = {}
    for feed in FEEDS:
        runs = []
        for i in range(s["runs"]):
            log(f"e2e {feed}: generator unthrottled, {s['duration']:.0f}s window, run {i + 1}/{s['runs']}")
            runs.append(_e2e(s, feed, 0.0, s["duration"], fast_poll=s["quick"]))
        entry = {"unthrottled": runs}
        if all(r["sustainable"] for r in runs):
            entry["max_rate"] = {"kind": "unthrottled", "rate": median(r.get("ingest_rate") for r in runs),
                                 "committed_rate": median(r.get("committed_rate") for r in runs)}
        else:
            entry["max_rate"] = search_max_rate(s, feed, runs)
        out[feed] = entry
    return out


def search_max_rate(s: dict, feed: str, unthrottled: list[dict]) -> dict:
    """Bisects the generator's rate for the highest one with 0 drops and no growing backlog, then
    holds it for the full duration (``runs`` times); steps down 15 % (up to 3 times) while that fails:
    a short probe can pass a rate that a full window does not hold."""
    # the best unthrottled run bounds the search (a busy machine slows the others down)
    hi = max((r.get("ingest_rate") or 0.0 for r in unthrottled), default=0.0)
    committed = max((r.get("committed_rate") or 0.0 for r in unthrottled), default=0.0)
    lo = 0.0
    probes = []
    rate = 0.9 * committed if committed else hi / 2
    for step in range(s["search_steps"]):
        if rate <= 0:
            break
        log(f"e2e {feed}: probing {rate:,.0f} frames/s for {s['probe_seconds']:.0f}s (step {step + 1}/{s['search_steps']})")
        probe = _e2e(s, feed, rate, s["probe_seconds"])
        achieved = (probe.get("generator") or {}).get("rate_achieved") or 0.0
        ok = probe["sustainable"] and achieved >= 0.97 * rate
        probes.append({"rate": rate, "ok": ok, "committed_rate": probe.get("committed_rate"), "achieved": achieved})
        if ok:
            lo = rate
        else:
            hi = rate
        rate = (lo + hi) / 2
    confirmations = []
    for attempt in range(4):
        if lo <= 0:
            break
        runs = []
        for i in range(s["runs"]):
            log(f"e2e {feed}: holding {lo:,.0f} frames/s for {s['duration']:.0f}s, run {i + 1}/{s['runs']}")
            runs.append(_e2e(s, feed, lo, s["duration"]))
        confirmations.append({"rate": lo, "runs": runs})
        if sum(r["sustainable"] for r in runs) * 2 > len(runs):
            return {"kind": "searched", "rate": lo, "committed_rate": median(r.get("committed_rate") for r in runs),
                    "probes": probes, "confirmations": confirmations,
                    "all_probes_held": bool(probes) and all(p["ok"] for p in probes)}
        lo *= 0.85
    return {"kind": "not found", "rate": None, "committed_rate": None, "probes": probes, "confirmations": confirmations}


def measure_latency(s: dict, e2e_results: dict) -> dict:
    out = {}
    for feed in FEEDS:
        if s["quick"]:  # a smoke run: the unthrottled run was polled at 20 Hz already
            runs = e2e_results[feed]["unthrottled"]
            out[feed] = {"rate": median(r.get("committed_rate") for r in runs), "runs": runs,
                         "basis": "--quick: the unthrottled run"}
            continue
        best = e2e_results[feed]["max_rate"]
        top = best.get("rate") if best["kind"] == "searched" else best.get("committed_rate")
        if not top:
            out[feed] = {"rate": None, "runs": [], "error": "no zero-drop rate was found"}
            continue
        rate = top / 2
        runs = []
        for i in range(s["runs"]):
            log(f"latency {feed}: {rate:,.0f} frames/s (half the highest zero-drop rate), run {i + 1}/{s['runs']}")
            runs.append(_e2e(s, feed, rate, s["duration"], fast_poll=True))
        out[feed] = {"rate": rate, "runs": runs}
    return out


def measure_micro(s: dict) -> list[dict]:
    moto = None
    port = None
    try:
        moto, port = micro.start_moto()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        log(f"moto server did not start: {exc}")
    runs = []
    try:
        for i in range(s["runs"]):
            log(f"micro: parse, check, persist ({s['persist_keys']:,} keys), seal, archive; run {i + 1}/{s['runs']}")
            await_quiet(s)
            # in a fresh process: this one holds every e2e sample, and a large heap slowed parsing by up to 40 %
            arguments = dict(seconds=s["micro_seconds"], total_keys=s["persist_keys"], batch_rows=s["persist_batch"],
                             archive_extra_mb=s["archive_extra_mb"], moto_port=port, book_rows=s["book_rows"],
                             book_batch=s["book_batch"], hour_keys=s["hour_keys"])
            runs.append(_json_subprocess([common.python(), "-m", "benchmarks.micro", json.dumps(arguments)], 1800))
    finally:
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(10)
            except subprocess.TimeoutExpired:
                moto.kill()
    return runs


def measure_profile(s: dict, folder: str) -> dict:
    out = {}
    for feed in FEEDS:
        seconds = min(s["duration"], 30.0)
        log(f"profile: e2e {feed} with py-spy on every process for {seconds:.0f}s -> {folder}")
        result = _e2e(s, feed, 0.0, seconds, profile=folder)
        out[feed] = {"run": {k: result.get(k) for k in ("committed_rate", "ingest_rate", "cpu_share", "errors")},
                     "processes": {name: summarize_profile(Path(folder) / f"{feed}-{name}.txt", seconds, s["profile_rate"])
                                   for name in PROCESSES}}
    return out


def summarize_profile(path: Path, seconds: float, rate: int, top: int = 12) -> dict:
    """Own and inclusive time per function from py-spy's raw (collapsed) output, as % of wall time."""
    if not path.exists():
        return {"error": f"no profile at {path}"}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith("thread ") else ""
        if thread:
            frames = frames[1:]
            threads[thread] = threads.get(thread, 0) + count
        names = [_function(f) for f in frames]
        total += count
        if names:
            own[names[-1]] = own.get(names[-1], 0) + count
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
    wall = seconds * rate

    def ranked(table: dict) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / wall) for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]]

    return {"active_pct": 100.0 * total / wall, "threads": {t: 100.0 * n / wall for t, n in threads.items()},
            "own": ranked(own), "inclusive": ranked(inclusive), "file": str(path)}


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


# -- the table ---------------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if digits:
        return f"{value:.{digits}f}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def spread(values: list[float | None], digits: int = 0) -> str:
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return ""
    return f"{fmt(min(present), digits)} … {fmt(max(present), digits)}"


def expected_row_keys() -> list[str]:
    """Every row the table has, whatever the results (the smoke test checks them all)."""
    keys = []
    for feed in FEEDS:
        keys += [f"e2e.{feed}.{k}" for k in ("rate", "drops", "max", "cpu", "seal")]
    keys += [f"ceiling.ws.{feed}" for feed in FEEDS] + [f"ceiling.ratio.{feed}" for feed in FEEDS]
    keys += [f"ceiling.zmq.{mode}.{size}" for mode, size in ZMQ_CASES]
    keys += [f"micro.parse.{name}.{kind}" for name in EXCHANGES for kind in ("trade", "book")]
    keys += ["micro.check", "micro.persist.receive"] + [f"micro.persist.insert.{k}" for k in range(3)]
    keys += ["micro.persist.hour", "micro.persist.books", "micro.seal", "micro.archive"]
    keys += [f"memory.{feed}.{proc}" for feed in FEEDS for proc in PROCESSES]
    keys += [f"latency.{feed}" for feed in FEEDS]
    return keys


class Table:
    COLUMNS = (("figure", "figure"), ("value", "median"), ("runs", "runs: min … max"), ("target", "target"),
               ("ok", "met"), ("note", "notes"))

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, key: str, label: str, value: str, runs: str = "", target: str = "", ok: bool | None = None,
            note: str = "") -> None:
        self.rows.append({"key": key, "figure": label, "value": value, "runs": runs, "target": target,
                          "ok": "" if ok is None else ("yes" if ok else "NO"), "note": note})

    def render(self) -> str:
        cols = [c for c, _ in self.COLUMNS]
        heads = dict(self.COLUMNS)
        widths = {c: max(len(heads[c]), *(len(r[c]) for r in self.rows)) for c in cols}
        rule = "-+-".join("-" * widths[c] for c in cols)
        out = [" | ".join(heads[c].ljust(widths[c]) for c in cols).rstrip(), rule]
        section = None
        for row in self.rows:
            head = row["key"].split(".")[0]
            if section is not None and head != section:
                out.append(rule)
            section = head
            out.append(" | ".join((row[c].rjust(widths[c]) if c == "value" else row[c].ljust(widths[c])) for c in cols).rstrip())
        return "\n".join(out)


def build_table(res: dict, s: dict) -> Table:
    t = Table()
    bi = s["batch_interval"]
    e2e_res = res.get("e2e") or {}
    # 1. end to end
    for feed in FEEDS:
        entry = e2e_res.get(feed) or {}
        runs = entry.get("unthrottled") or []
        rates = [r.get("committed_rate") for r in runs]
        target = TARGETS[f"e2e.{feed}.rate"]
        value = median(rates)
        ingest = median(r.get("ingest_rate") for r in runs)
        t.add(f"e2e.{feed}.rate", f"e2e {feed}: committed records/s, unthrottled", fmt(value), spread(rates),
              f">= {target:,}", value is not None and value >= target,
              f"{s['duration']:g} s windows; ingest read {fmt(ingest)}/s")
        dropped = sum(_dropped(r) for r in runs)
        lost = sum(_lost(r) for r in runs)
        errors = [e for r in runs for e in (r.get("errors") or [])]
        t.add(f"e2e.{feed}.drops", f"e2e {feed}: dropped / lost / errors", f"{dropped:,.0f} / {lost:,.0f} / {len(errors)}",
              f"sum of {len(runs)}", "0 / 0 / 0", bool(runs) and dropped == 0 and lost == 0 and not errors,
              "; ".join(errors)[:120])
        best = entry.get("max_rate") or {}
        if best.get("kind") == "unthrottled":
            value_text, note = fmt(best.get("rate")), "= unthrottled: no drop even at full speed (ingest-bound)"
        elif best.get("kind") == "searched":
            value_text = fmt(best.get("rate"))
            reasons = "; ".join(sorted({r.get("unsustainable_reason", "") for r in runs} - {""}))
            note = (f"bisected (unthrottled runs: {reasons}); held {s['duration']:g} s: "
                    f"{fmt(best.get('committed_rate'))}/s committed, 0 drops")
            if best.get("all_probes_held"):
                value_text = ">= " + value_text
                note += "; every probe held, up to the unthrottled read rate"
        else:
            value_text, note = "none", "no rate held 0 drops"
        t.add(f"e2e.{feed}.max", f"e2e {feed}: max 0-drop generator rate, /s", value_text, "", "", None, note)
        shares = {p: median(((r.get("cpu_share") or {}).get(p)) for r in runs) for p in PROCESSES}
        foreign = median(r.get("foreign_cpu_cores") for r in runs)
        cpu_text = " ".join(f"{p[:3]} {'n/a' if v is None else f'{100 * v:.0f}'}" for p, v in shares.items())
        t.add(f"e2e.{feed}.cpu", f"e2e {feed}: CPU, % of one core", cpu_text, "", "", None,
              f"generator/ingest/check/persist; other processes on the machine: {'n/a' if foreign is None else f'{100 * foreign:.0f}'}%")
        seal_rates = [_seal_rate(r) for r in runs]
        seal_rows = median((r.get("stop") or {}).get("seal_rows") for r in runs)
        t.add(f"e2e.{feed}.seal", f"e2e {feed}: seal at the end, rows/s", fmt(median(seal_rates)), spread(seal_rates), "", None,
              f"SIGUSR1 -> seal counter; {fmt(seal_rows)} rows")
    # 2. ceilings
    ceil = res.get("ceiling") or {}
    for feed in FEEDS:
        ws_runs = (ceil.get("ws") or {}).get(feed) or []
        recv = [r.get("rate") for r in ws_runs if r.get("method") == "recv"]
        recv_data = [r.get("rate") for r in ws_runs if r.get("method") == "recv_data"]
        gen_cpu = median(r.get("generator_cpu_share") for r in ws_runs)
        cli_cpu = median(r.get("cpu_share") for r in ws_runs if r.get("method") == "recv")
        t.add(f"ceiling.ws.{feed}", f"bare websocket-client recv(), {feed}, /s", fmt(median(recv)), spread(recv), "", None,
              f"recv_data(): {fmt(median(recv_data))}/s; CPU client {_pct(cli_cpu)}%, generator {_pct(gen_cpu)}%")
    for feed in FEEDS:
        ws_runs = (ceil.get("ws") or {}).get(feed) or []
        recv = median(r.get("rate") for r in ws_runs if r.get("method") == "recv")
        committed = median(r.get("committed_rate") for r in (e2e_res.get(feed) or {}).get("unthrottled") or [])
        ratio = committed / recv if committed and recv else None
        t.add(f"ceiling.ratio.{feed}", f"e2e / bare recv(), {feed}", fmt(ratio, 2), "", f">= {TARGETS['ratio']}",
              ratio is not None and ratio >= TARGETS["ratio"], "medians of the two rows above")
    for mode, size in ZMQ_CASES:
        z = (ceil.get("zmq") or {}).get(f"{mode}.{size}") or []
        rates = [r.get("rate") for r in z]
        what = "1 rec/msg" if mode == "single" else "512 rec/msg"
        t.add(f"ceiling.zmq.{mode}.{size}", f"bare ZeroMQ 3 procs, {what}, {size} B, rec/s", fmt(median(rates)), spread(rates),
              "", None, _errors(z) or ("blocking sends, no drops" if mode == "single" else "ingest's wire format, 2 frames"))
    # 3. per stage
    mic = res.get("micro") or []
    for name in EXCHANGES:
        for kind in ("trade", "book"):
            entries = [((m.get("parse") or {}).get(name) or {}).get(kind) or {} for m in mic]
            rates = [e.get("frames_per_s") for e in entries]
            value = median(rates)
            target = TARGETS["parse.trade"] if kind == "trade" else None
            first = entries[0] if entries else {}
            note = first.get("error") or f"{first.get('source', '?')}, {fmt(first.get('mean_bytes'))} B avg; fastest of 5 tries a run, taken in turns"
            t.add(f"micro.parse.{name}.{kind}", f"parse {name} {kind}s, frames/s/core", fmt(value), spread(rates),
                  f">= {target:,}" if target else "", (value is not None and value >= target) if target else None, note)
    checks = [(m.get("check") or {}).get("check_per_s") for m in mic]
    stage = median((m.get("check") or {}).get("stage_per_s") for m in mic)
    t.add("micro.check", "check: Checker.check, rec/s/core", fmt(median(checks)), spread(checks), "", None,
          f"with decode_headers: {fmt(stage)}/s")
    wire = [(m.get("persist") or {}).get("batch_from_wire_rows_per_s") for m in mic]
    wal = median((m.get("persist") or {}).get("wal_rows_per_s") for m in mic)
    t.add("micro.persist.receive", "persist: batch_from_wire, rows/s/core", fmt(median(wire)), spread(wire), "", None,
          f"WAL append + fsync: {fmt(wal)} rows/s" if wal else "")
    for k in range(3):
        rates = [(((m.get("persist") or {}).get("insert_thirds") or [{}] * 3)[k]).get("rows_per_s") for m in mic]
        third = ((mic[0].get("persist") or {}).get("insert_thirds") or [{}] * 3)[k] if mic else {}
        span = f"{_short(third.get('from_keys'))}-{_short(third.get('to_keys'))}" if third else "?"
        value = median(rates)
        dup = median((m.get("persist") or {}).get("duplicate_batch_rows_per_s") for m in mic)
        t.add(f"micro.persist.insert.{k}", f"persist insert (dedup), stored_keys {span}, rows/s", fmt(value), spread(rates),
              f">= {TARGETS['persist']:,}", value is not None and value >= TARGETS["persist"],
              f"Store.insert, {fmt(s['persist_batch'])}-row Arrow tables" + (f"; all-duplicate batch {fmt(dup)}/s" if k == 2 else ""))
    hour = [(m.get("persist_hour") or {}).get("rows_per_s") for m in mic]
    t.add("micro.persist.hour", f"persist insert (dedup), an hour of keys ({_short(s['hour_keys'])}) stored, rows/s",
          fmt(median(hour)), spread(hour), f">= {TARGETS['persist']:,}", median(hour) is not None and median(hour) >= TARGETS["persist"],
          f"keys received over the last hour, as after an hour at {fmt(s['hour_keys'] / 3600)} records/s; "
          f"{fmt(s['persist_keys'] // 3)} fresh rows")
    books = [(m.get("persist_books") or {}).get("rows_per_s") for m in mic]
    book_mb = median((m.get("persist_books") or {}).get("mb_per_s") for m in mic)
    t.add("micro.persist.books", "persist insert (dedup), book rows, rows/s", fmt(median(books)), spread(books), "", None,
          f"depth20 rows (1.37 KB), {fmt(s['book_batch'])}-row tables, {fmt(s['book_rows'])} rows: {fmt(book_mb, 1)} MB/s of JSON")
    seals = [((m.get("persist") or {}).get("seal") or {}).get("rows_per_s") for m in mic]
    t.add("micro.seal", "seal to Parquet (Store.seal), rows/s", fmt(median(seals)), spread(seals), "", None,
          f"{fmt(s['persist_keys'])} rows, zstd")
    arch = [((m.get("persist") or {}).get("archive") or {}).get("mb_per_s") for m in mic]
    put = median(((m.get("persist") or {}).get("archive") or {}).get("put_mb_per_s") for m in mic)
    t.add("micro.archive", "archive to S3 (moto), MB/s", fmt(median(arch), 1), spread(arch, 1), "", None,
          f"S3Target put + size check; put alone {fmt(put, 1)} MB/s; sealed files + {s['archive_extra_mb']} MB random")
    # 4. memory: in the runs that held 0 drops (an overload's backlog grows until the high-water marks)
    for feed in FEEDS:
        entry = e2e_res.get(feed) or {}
        best = entry.get("max_rate") or {}
        if best.get("kind") == "searched":
            runs, basis = best["confirmations"][-1]["runs"], f"at {fmt(best['rate'])}/s"
        else:
            runs, basis = entry.get("unthrottled") or [], "unthrottled"
        for proc in PROCESSES:
            mems = [((r.get("memory") or {}).get(proc) or {}) for r in runs]
            peak = median(m.get("peak_mb") for m in mems)
            steady = median(m.get("steady_mb") for m in mems)
            growth = median(m.get("growth_mb_per_30s") for m in mems)
            noise = median(m.get("growth_noise_mb_per_30s") for m in mems)
            t.add(f"memory.{feed}.{proc}", f"RSS {proc}, e2e {feed}: peak / steady", f"{fmt(peak, 1)} / {fmt(steady, 1)} MB",
                  "", f"growth < {TARGETS['rss_growth_mb']:g} MB or noise", no_growth(growth, noise),
                  f"{basis}; growth over the last {fmt(median(m.get('tail_seconds') for m in mems), 0)} s: "
                  f"{fmt(growth, 2)} ± {fmt(noise, 2)} MB per 30 s (runs {spread([m.get('growth_mb_per_30s') for m in mems], 2) or 'one'})")
    # 5. latency
    lat = res.get("latency") or {}
    for feed in FEEDS:
        entry = lat.get(feed) or {}
        stats = [((r.get("outbox") or {}).get("latency") or {}) for r in entry.get("runs") or []]
        p50 = median(x.get("p50") for x in stats)
        p99 = median(x.get("p99") for x in stats)
        p99_lower = median(x.get("p99_lower") for x in stats)
        t.add(f"latency.{feed}", f"receipt -> committed, {feed}: p50 / p99", f"{fmt(p50, 2)} / {fmt(p99, 2)} s",
              spread([x.get("p99") for x in stats], 2), f"p99 <= {bi + 1:g} s", p99 is not None and p99 <= bi + 1,
              f"at {fmt(entry.get('rate'))}/s ({entry.get('basis', 'half the max 0-drop rate')}); p99 lower bound {fmt(p99_lower, 2)} s")
    return t


def no_growth(growth: float | None, noise: float | None) -> bool:
    """Steady memory: a slope under the target, or one its own scatter cannot tell from 0."""
    if growth is None:
        return False
    return abs(growth) < TARGETS["rss_growth_mb"] or (noise is not None and abs(growth) <= noise)


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}"


def _short(n: float | None) -> str:
    if n is None:
        return "?"
    if n >= 1e6:
        return f"{n / 1e6:g}M"
    if n >= 1e3:
        return f"{n / 1e3:g}k"
    return f"{n:g}"


def _errors(runs: list[dict]) -> str:
    return "; ".join(r["error"] for r in runs if r.get("error"))[:120]


def _dropped(run: dict) -> float:
    final = (run.get("stop") or {}).get("final") or {}
    return sum((final.get(stage) or {}).get("dropped", 0) for stage in ("ingest", "check"))


def _lost(run: dict) -> float:
    """Records accepted downstream but neither committed nor skipped as duplicates."""
    final = (run.get("stop") or {}).get("final") or {}
    check, persist = final.get("check") or {}, final.get("persist") or {}
    if not check or not persist:
        return 0.0
    return max(0.0, check.get("received", 0) - check.get("dropped", 0) - persist.get("committed", 0) - persist.get("duplicates", 0))


def _seal_rate(run: dict) -> float | None:
    stop = run.get("stop") or {}
    if stop.get("seal_seconds") and stop.get("seal_rows"):
        return stop["seal_rows"] / stop["seal_seconds"]
    return None


METHOD = """\
How: e2e = real `collector ingest|check|persist` processes (CLI), BATCH_INTERVAL={bi:g} s, {transport} between stages,
  fed by benchmarks/loadgen.py over ws://127.0.0.1; rate = rows committed in DuckDB (persist's
  collector_db_snapshots_written_total) over the window; drops = collector_messages_dropped_total of ingest+check;
  lost = accepted by check but not committed after the drain. Then SIGUSR1 seals, and the outbox is read back.
Latency: persist's committed counter is polled at 20 Hz; the pipeline keeps order, so the k-th smallest id is the
  k-th committed row; commit time = the first poll that saw the counter exceed k (an upper bound, <= 1 poll + 1 HTTP
  round trip late); receipt = timestamp_collector read back from the sealed Parquet. Rows received in the window only.
Memory: RSS sampled each second; steady = median of the window's last 30 s; growth = least-squares slope over them,
  ± two standard errors of that slope (noise: a batching process's RSS saw-tooths).
CPU %: psutil, over the window; 'other processes' = machine busy time not spent in the benchmark's processes."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="crypto-collector benchmark suite (one table)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every figure in well under a minute")
    parser.add_argument("--runs", type=int, help="runs per figure; the table shows the median (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds of each e2e window (default 60, quick 3)")
    parser.add_argument("--json", dest="json_path", help="save every run's numbers to this file")
    parser.add_argument("--profile", metavar="DIR", help="also profile one e2e run per feed with py-spy into DIR")
    parser.add_argument("--batch-interval", type=float, default=1.0, help="persist's BATCH_INTERVAL in e2e runs")
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp", help="ZeroMQ between stages (tcp: the default)")
    parser.add_argument("--only", default="ceiling,e2e,latency,micro",
                        help="comma-separated sections to run (ceiling,e2e,latency,micro); latency needs e2e")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement wait up to this long for the machine to be nearly idle")
    parser.add_argument("--keep", action="store_true", help="keep each e2e run's folder (logs, outbox) in /tmp")
    args = parser.parse_args(argv)

    s = dict(QUICK if args.quick else FULL)
    if args.runs:
        s["runs"] = args.runs
    if args.duration:
        s["duration"] = args.duration
    s.update(batch_interval=args.batch_interval, transport=args.transport, keep=args.keep, profile_rate=100,
             quick=args.quick, wait_quiet=args.wait_quiet)
    sections = {x.strip() for x in args.only.split(",") if x.strip()}
    started = time.time()
    res: dict = {"machine": common.machine(), "versions": common.versions(), "settings": s, "code": code_state()}
    log(f"benchmark suite: {'quick' if args.quick else 'full'} run, {s['runs']} run(s) per figure")
    if "ceiling" in sections:
        res["ceiling"] = measure_ceilings(s)
    if "e2e" in sections:
        res["e2e"] = measure_e2e(s)
        if "latency" in sections:
            res["latency"] = measure_latency(s, res["e2e"])
    if "micro" in sections:
        res["micro"] = measure_micro(s)
    if args.profile:
        res["profile"] = measure_profile(s, args.profile)
    res["seconds"] = time.time() - started
    res["code_after"] = code_state()
    res["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    table = build_table(res, s)
    res["table"] = table.rows

    m, v = res["machine"], res["versions"]
    print(f"machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB, {m['os']}; "
          f"load average {m['load_average'][0]} before, {res['load_average_after'][0]} after")
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    code, after = res["code"], res["code_after"]
    print(f"code: {common.REPO} at {code['head']}, {code['uncommitted_files']} uncommitted file(s) in stages/ pipeline/, "
          f"source hash {code['hash']}" + ("" if after["hash"] == code["hash"]
                                           else f" -- CHANGED DURING THE RUN (now {after['head']}, {after['hash']})"))
    print(f"settings: {s['runs']} run(s) per figure (median shown), e2e window {s['duration']:g} s"
          f"{' (--quick)' if args.quick else ''}, BATCH_INTERVAL {s['batch_interval']:g} s, "
          f"suite took {res['seconds'] / 60:.1f} min")
    print()
    print(table.render())
    print()
    print(METHOD.format(bi=s["batch_interval"], transport=s["transport"]))
    if res.get("profile"):
        print()
        print(render_profile(res["profile"]))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res, indent=1, default=str))
        log(f"saved {args.json_path}")
    return 0


def render_profile(profile: dict) -> str:
    out = ["py-spy (own time, % of wall time of the process; inclusive in brackets for the top callers):"]
    for feed, entry in profile.items():
        run = entry.get("run") or {}
        out.append(f"== e2e {feed} (profiled run: {fmt(run.get('committed_rate'))}/s committed)")
        for proc, summary in entry["processes"].items():
            if "error" in summary:
                out.append(f"  {proc}: {summary['error']}")
                continue
            threads = ", ".join(f"{name} {pct:.0f}%" for name, pct in sorted(summary["threads"].items(), key=lambda kv: -kv[1])[:3])
            out.append(f"  {proc}: on CPU {summary['active_pct']:.0f}% ({threads})")
            out.append("    own:       " + "; ".join(f"{name} {pct:.1f}%" for name, pct in summary["own"][:8]))
            out.append("    inclusive: " + "; ".join(f"{name} {pct:.1f}%" for name, pct in summary["inclusive"][:8]))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
