"""Hostile input: a byte-level fuzzer (atheris / libFuzzer) and explicit nasty frames over every
exchange parser and the wire decoder, and oversized frames at a live ingest.

Complements the hypothesis suites (tests/exchanges/test_parsers_property.py over the parsers,
tests/unit/test_records.py over the wire format): those generate structured values, this one
mutates bytes with coverage feedback, and adds the sizes and shapes hypothesis never makes (10 MB
frames, 100 000-deep nesting). Nothing may escape ``parse_safely`` or the decoders (other than the
``WireError`` the stages catch), nothing may hang, and memory stays bounded.

Default run: 100 000 atheris runs per target (≈ seconds). ``-m slow``: ``FAULTS_FUZZ_SECS`` (600)
per target.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest

from pipeline.exchanges import REGISTRY
from pipeline.records import EVENTS, WireError, decode_events, decode_headers, encode_records
from tests.conftest import FIXTURES, REPO, wait_for
from tests.e2e.feed import Feeder, trade_records
from tests.e2e.harness import Pipeline
from tests.exchanges.expect import check_parsed
from tests.faults.common import write_report
from tests.faults.wsserver import FakeBinance, trade

ADAPTERS = list(REGISTRY.values())
RSS_LIMIT_MB = 1024
DICTIONARY = [
    '"stream"', '"data"', '"@trade"', '"btcusdt@trade"', '"btcusdt@depth20@100ms"', '"arg"', '"channel"', '"instId"',
    '"trades"', '"books"', '"topic"', '"publicTrade.BTCUSDT"', '"orderbook.50.BTCUSDT"', '"type"', '"ty"', '"trade"',
    '"orderbook"', '"match"', '"l2update"', '"snapshot"', '"delta"', '"product_id"', '"trade_id"', '"time"', '"t"',
    '"E"', '"T"', '"u"', '"i"', '"ts"', '"seqId"', '"prevSeqId"', '"tradeId"', '"sid"', '"tms"', '"ttms"', '"cd"',
    '"code"', '"KRW-BTC"', '"BTC-USDT"', '"BTC-USD"', '"lastUpdateId"', '"bids"', '"asks"', '"obu"', '"changes"',
    '"2021-04-17T16:43:37.075351Z"', "NaN", "Infinity", "-Infinity", "1e999", "18446744073709551616", "null", "true",
    "false", "[]", "{}", '":"', '","', "\\u0000", "\\ud800",
]


def fuzz_corpus(directory: Path) -> Path:
    """Seeds: a few recorded frames of every file of every exchange, and wire messages made from them."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(Path(FIXTURES).rglob("*.jsonl")):
        lines = [line for line in path.read_bytes().splitlines() if line.strip() and len(line) < 4096]
        for line in lines[:: max(1, len(lines) // 5)][:5]:
            (directory / f"seed{n}").write_bytes(line)
            n += 1
    assert n > 20, f"no fixtures under {FIXTURES}"
    return directory


def wire_corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frames = encode_records([h for h, _ in trade_records(["btcusdt"], 3)], [d for _, d in trade_records(["btcusdt"], 3)])
    header, data = frames[1], frames[2]
    (directory / "records").write_bytes(len(header).to_bytes(2, "little") + header + data)
    (directory / "events").write_bytes(b"\0\0" + orjson.dumps([{"kind": "gap", "exchange": "binance", "symbol": "btcusdt",
                                                                 "data_type": "trade", "start_time": 1, "end_time": 2,
                                                                 "expected": "5", "received": "9", "missing": 4}]))
    return directory


def run_atheris(target: str, corpus: Path, tmp_path: Path, runs: int, seconds: int) -> dict:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; it ships manylinux wheels "
                        "for CPython 3.8-3.11 only)")
    dictionary = tmp_path / "json.dict"
    dictionary.write_text("\n".join(json.dumps(token) for token in DICTIONARY) + "\n")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "tests.faults.fuzz_target", target, f"-runs={runs}", f"-max_total_time={seconds}",
               f"-rss_limit_mb={RSS_LIMIT_MB}", f"-malloc_limit_mb={RSS_LIMIT_MB}", "-timeout=10", "-max_len=65536",
               f"-dict={dictionary}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(corpus)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=seconds + 300)
    output = result.stdout + result.stderr
    stats = dict(re.findall(r"^stat::(\w+):\s*(\d+)", output, re.MULTILINE))
    done = [line for line in output.splitlines() if "DONE" in line or line.startswith("Done ")]
    assert result.returncode == 0, f"atheris found a failure (artifacts in {artifacts}):\n{output[-6000:]}"
    return {"target": target, "runs": int(stats.get("number_of_executed_units", 0)),
            "seconds": round(time.monotonic() - started, 1), "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
            "rss_limit_mb": RSS_LIMIT_MB, "summary": done[-2:] if done else []}


def test_atheris_over_every_parser(tmp_path):
    figures = run_atheris("parsers", fuzz_corpus(tmp_path / "corpus"), tmp_path, runs=100_000, seconds=120)
    print(figures)
    write_report("fuzz_parsers_default", figures)


def test_atheris_over_the_wire_decoder(tmp_path):
    figures = run_atheris("wire", wire_corpus(tmp_path / "corpus"), tmp_path, runs=100_000, seconds=120)
    print(figures)
    write_report("fuzz_wire_default", figures)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("target", ["parsers", "wire"])
def test_atheris_long_run(tmp_path, target):
    seconds = int(os.environ.get("FAULTS_FUZZ_SECS", "600"))
    corpus = fuzz_corpus(tmp_path / "corpus") if target == "parsers" else wire_corpus(tmp_path / "corpus")
    figures = run_atheris(target, corpus, tmp_path, runs=-1, seconds=seconds)
    print(figures)
    write_report(f"fuzz_{target}_long", figures)


# -- explicit hostile frames -------------------------------------------------------------------------
BINANCE_TRADE = trade("btcusdt", 123)
TEN_MB = 10 * 1024 * 1024


def hostile_frames() -> dict[str, bytes]:
    def with_value(value: str) -> bytes:
        return (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":' + value.encode()
                + b',"p":"1","q":"1","T":1700000000000,"m":false,"M":true}}')

    return {
        "invalid utf-8 in a string": BINANCE_TRADE.replace(b'"BTCUSDT"', b'"BTC\xff\xfeUSDT"'),
        "invalid utf-8 lone surrogate escape": BINANCE_TRADE.replace(b'"BTCUSDT"', b'"\\ud800"'),
        "invalid utf-8 bytes only": b"\xff\xfe\xfd" * 1000,
        "overlong utf-8": b'{"stream":"\xc0\xafbtcusdt@trade","data":{}}',
        "10 MB string field": BINANCE_TRADE.replace(b'"1"', b'"' + b"9" * TEN_MB + b'"', 1) if b'"1"' in BINANCE_TRADE
        else with_value('"' + "9" * TEN_MB + '"'),
        "10 MB array of numbers": b'{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":5,"bids":['
        + b",".join([b'["1","2"]'] * (TEN_MB // 10)) + b'],"asks":[]}}',
        "10 MB of whitespace": b" " * TEN_MB + BINANCE_TRADE,
        "10 MB garbage": os.urandom(TEN_MB),
        "100k deep [": b"[" * 100_000,
        "100k deep [ closed": b"[" * 100_000 + b"]" * 100_000,
        "100k deep {": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "deep nesting in data": b'{"stream":"btcusdt@trade","data":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "NaN id": with_value("NaN"),
        "Infinity id": with_value("Infinity"),
        "-Infinity id": with_value("-Infinity"),
        "1e999 id": with_value("1e999"),
        "huge integer id 2**100": with_value(str(2**100)),
        "huge negative id": with_value(str(-(2**100))),
        "huge integer as string": with_value(f'"{2**100}"'),
        "2**64 id": with_value(str(2**64)),
        "id 2**63-2 (the largest accepted)": with_value(str(2**63 - 2)),
        "float id": with_value("1.5"),
        "bool id": with_value("true"),
        "null id": with_value("null"),
        "object id": with_value('{"x":1}'),
        "array id": with_value("[1]"),
        "empty frame": b"",
        "NUL bytes": b"\0" * 1000,
    }


@pytest.mark.parametrize("adapter", ADAPTERS, ids=[a.name for a in ADAPTERS])
def test_hostile_frames_never_escape_a_parser_nor_hang_nor_balloon(adapter):
    results, figures = {}, {}
    for name, frame in hostile_frames().items():
        started = time.perf_counter()
        parsed = adapter.parse_safely(frame)
        elapsed = time.perf_counter() - started
        tracemalloc.start()  # a second pass for memory (tracing slows allocation-heavy parses ~20x)
        adapter.parse_safely(frame)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        check_parsed(parsed)
        results[name] = "records" if parsed.records else (parsed.control or "malformed")
        assert elapsed < 5, f"{adapter.name}: {name} took {elapsed:.1f}s"
        # Parsing builds Python objects: 10 MB of tiny ``["1","2"]`` levels become 1M lists and 2M strings,
        # ~300 MB (30x). That is the worst case per byte of JSON; MAX_FRAME_BYTES (16 MB) bounds it.
        assert peak < 64 * 1024 * 1024 + 40 * len(frame), f"{adapter.name}: {name} peaked at {peak / 2**20:.0f} MB"
        figures[name] = {"result": results[name], "seconds": round(elapsed, 3), "peak_mb": round(peak / 2**20, 1)}
        if parsed.records and ("utf-8" in name or "Infinity" in name or "NaN" in name or "huge" in name
                               or "2**64" in name or "1e999" in name):
            pytest.fail(f"{adapter.name}: {name} became a record: {parsed.records[0][:4]}")
    write_report(f"hostile_frames_{adapter.name}", figures)
    if adapter.name == "binance":
        assert results["id 2**63-2 (the largest accepted)"] == "records"
        assert results["float id"] == results["bool id"] == results["null id"] == "malformed"


def test_hostile_wire_messages_raise_only_wire_errors():
    frames_of = {
        "10 MB header frame": [b"R", b"[" + b"1," * (TEN_MB // 2) + b"1]", b""],
        "100k deep header": [b"R", b"[" * 100_000, b""],
        "NaN in header": [b"R", b'[["binance","btcusdt","trade","1",NaN,null,1,0,false,"e",2]]', b"{}"],
        "huge int in header": [b"R", b'[["binance","btcusdt","trade","1",' + str(2**100).encode() + b',null,1,0,false,"e",2]]', b"{}"],
        "negative size": [b"R", b'[["binance","btcusdt","trade","1",1,null,1,0,false,"e",-2]]', b"{}"],
        "sizes past the data": [b"R", b'[["binance","btcusdt","trade","1",1,null,1,0,false,"e",99]]', b"{}"],
        "invalid utf-8 header": [b"R", b'[["\xff","btcusdt","trade","1",1,null,1,0,false,"e",2]]', b"{}"],
        "wrong types": [b"R", b'[[1,2,3,4,5,6,7,8,9,10,11]]', b""],
        "not a list": [b"R", b'{"a":1}', b""],
        "two frames": [b"R", b"[]"],
        "10 MB events": [EVENTS, b"[" + b"{}," * (TEN_MB // 3) + b"{}]"],
        "100k deep events": [EVENTS, b"[" * 100_000],
        "events not objects": [EVENTS, b"[1,2]"],
        "invalid utf-8 events": [EVENTS, b'[{"\xff":1}]'],
    }
    for name, frames in frames_of.items():
        started = time.perf_counter()
        try:
            (decode_headers if frames[0] == b"R" else decode_events)(frames)
        except WireError:
            pass
        assert time.perf_counter() - started < 5, name


@pytest.mark.parametrize("event", [{}, {"kind": "gap", "exchange": "binance", "symbol": "btcusdt", "data_type": "trade",
                                        "start_time": {"x": 1}}])
def test_an_event_persist_cannot_store_does_not_poison_persist(tmp_path, event):
    pipeline = Pipeline(tmp_path)
    try:
        persist = pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
        wait_for(persist.ready, 30, what="persist ready")
        feeder = Feeder(pipeline.persist_endpoint)
        try:
            feeder.send_events([event])
            feeder.send(trade_records(["btcusdt"], 100))
            time.sleep(3)
            written = persist.metric("collector_db_snapshots_written_total")
            bad = persist.metric("collector_bad_messages_total")
        finally:
            feeder.close()
        assert written == 100 and bad == 1, f"written {written}, bad messages {bad}; log:\n{persist.output()[-1500:]}"
    finally:
        pipeline.close()


# -- oversized frames at a live ingest ---------------------------------------------------------------
MAX_FRAME = 1024 * 1024


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _ingest_against(pipeline: Pipeline, server: FakeBinance, symbols: str = "btcusdt"):
    pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
    ingest = pipeline.start("ingest-binance", "ingest", "--exchange", "binance", "--symbols", symbols, "--feeds", "trades",
                            "--ws-url", server.url, "--push", pipeline.ingest_endpoint, "--max-frame-bytes", str(MAX_FRAME))
    for process in pipeline.processes.values():
        wait_for(lambda p=process: p.ready() or p.popen.poll() is not None, 30, what=f"{process.name} ready")
    return ingest


def oversized_producer(size: int):
    async def producer(conn) -> None:
        import asyncio

        for i in range(1, 60_000):
            if i == 50:
                await conn.send(trade("btcusdt", i, pad="x" * size))  # a real trade, padded past the limit
            else:
                await conn.send(trade("btcusdt", i))
            await asyncio.sleep(0.005)
    return producer


def test_a_frame_over_max_frame_bytes_is_refused_counted_and_the_stream_flows_on(tmp_path):
    server = FakeBinance(oversized_producer(2 * MAX_FRAME))
    pipeline = Pipeline(tmp_path)
    try:
        ingest = _ingest_against(pipeline, server)
        wait_for(lambda: ingest.metric("collector_oversized_frames_total") == 1, 30, what="the oversized frame counted")
        received = ingest.metric("collector_messages_received_total")
        wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 100, 30,
                 what="trades after the oversized frame")
        assert ingest.metric("collector_websocket_reconnects_total") == 0
        assert ingest.metric("collector_parse_errors_total") == 0
        assert "refused a frame" in ingest.output() and "Traceback" not in ingest.output()
        wait_for(lambda: pipeline["check"].metric("collector_sequence_gaps_total") >= 1, 10,
                 what="the refused trade id reported as a gap by check")
    finally:
        pipeline.close()
        server.close()


def test_an_oversized_frame_never_costs_more_memory_than_max_frame_bytes(tmp_path):
    """A hostile 128 MB frame with MAX_FRAME_BYTES at 1 MB: ingest skips it as it streams past
    (pipeline/wsframes.py), so its peak RSS moves by a few MB, not by the frame's size."""
    size = 128 * 1024 * 1024
    server = FakeBinance(oversized_producer(size))
    pipeline = Pipeline(tmp_path)
    try:
        ingest = _ingest_against(pipeline, server)
        wait_for(lambda: ingest.metric("collector_messages_received_total") >= 20, 30, what="first trades")
        before = _vm_hwm_kb(ingest.popen.pid)
        wait_for(lambda: ingest.metric("collector_oversized_frames_total") == 1, 60, what="the oversized frame counted")
        growth_mb = (_vm_hwm_kb(ingest.popen.pid) - before) / 1024
        print(f"peak RSS growth while refusing a {size >> 20} MB frame: {growth_mb:.0f} MB")
        write_report("oversized_frame_memory", {"frame_mb": size >> 20, "max_frame_bytes": MAX_FRAME,
                                                "peak_rss_growth_mb": round(growth_mb, 1)})
        assert growth_mb < 4 * MAX_FRAME / 2**20 + 32, f"peak RSS grew {growth_mb:.0f} MB for a refused frame"
    finally:
        pipeline.close()
        server.close()
