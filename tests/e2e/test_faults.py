"""Streams that survive the real world, and a checker that tells the truth about them.

The simulator injects gaps, repeats, reorders, silence, disconnects and garbage; the real pipeline
must count each exactly, recover by itself, and never block a WebSocket read on a stalled stage.
"""
from __future__ import annotations

import signal

import pytest

from pipeline import archive_views, exchanges, topology
from pipeline.exchanges.base import Semantics
from tests.conftest import wait_for
from tests.e2e.harness import Pipeline, read_manifest

FAST_RECONNECT = ("WS_MESSAGE_TIMEOUT_SECS", "2", "WS_INITIAL_RETRY_DELAY_SECS", "0.2", "WS_MAX_RETRY_DELAY_SECS", "1")


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, env=dict(zip(FAST_RECONNECT[::2], FAST_RECONNECT[1::2])))
    yield p
    p.close()


def start(pipeline: Pipeline, tmp_path, exchange: str, *options: str, feeds: str = "orderbook,trades",
          symbols: str | None = None, ingest_args: tuple[str, ...] = ()):
    manifest = tmp_path / "manifest.jsonl"
    _, port = pipeline.simulator(exchange, "--seed", "5", "--manifest", str(manifest), *options)
    pipeline.stages(exchange, port, symbols or topology.DEFAULT_SYMBOLS[exchange], feeds, ingest_args)
    return manifest


def stream_totals(manifest_path, kind: str) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for event in read_manifest(manifest_path):
        if event.get("fault") == kind:
            key = (event["symbol"], event["data_type"])
            totals[key] = totals.get(key, 0) + 1
    return totals


@pytest.fixture
def steady_pipeline(tmp_path):
    """Default timeouts: an idle stream stays connected, so no reconnect repeats add duplicates."""
    p = Pipeline(tmp_path)
    yield p
    p.close()


@pytest.mark.parametrize("exchange", ["binance", "okx", "bybit", "coinbase", "upbit"])
def test_injected_gaps_repeats_and_reorders_are_counted_exactly(steady_pipeline, tmp_path, exchange):
    """Counted as the feed's declared id semantics allow: a skipped id is a gap only where ids are
    contiguous (Bybit spot trade ids only increase; Upbit's are unique, not even ordered)."""
    pipeline = steady_pipeline
    semantics = exchanges.get(exchange).feeds["trades"].semantics
    count = 120
    manifest = start(pipeline, tmp_path, exchange, "--rate", "150", "--count", str(count), "--gap-every", "17",
                     "--duplicate-every", "13", "--reorder-every", "29", feeds="trades")
    check = pipeline["check"]

    def all_sent():
        per_stream: dict = {}
        for e in read_manifest(manifest):
            per_stream[e["symbol"]] = per_stream.get(e["symbol"], 0) + (e.get("fault") != "duplicate")
        return len(per_stream) == 2 and all(n >= count for n in per_stream.values())

    wait_for(all_sent, 60, what="simulator finished")
    gaps, repeats, reorders = (stream_totals(manifest, k) for k in ("gap", "duplicate", "reorder"))
    assert gaps and repeats and reorders, "the faults must have been injected for the test to prove anything"
    if semantics is not Semantics.CONTIGUOUS:
        gaps = {}
    if semantics is Semantics.UNIQUE:
        reorders = {}
    expected = (sum(gaps.values()), sum(repeats.values()), sum(reorders.values()))

    def counted():
        return tuple(int(check.metric(f"collector_sequence_{name}_total")) for name in ("gaps", "duplicates", "out_of_order"))

    try:
        wait_for(lambda: counted() == expected, 30, what="check's counts to reach the injected faults")
    except AssertionError:
        assert counted() == expected, "(gaps, duplicates, out of order) counted vs injected"
    for (symbol, data_type), n in gaps.items():
        assert check.metric("collector_sequence_gaps_total", exchange=exchange, symbol=symbol, data_type=data_type) == n

    # the gap log in the archive names exactly the skipped ids
    pipeline.seal_and_archive()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    logged = con.execute("SELECT symbol, expected, missing FROM gaps WHERE kind = 'gap' ORDER BY ALL").fetchall()
    skipped = sorted((e["symbol"], e["exchange_sequence_id"], 1) for e in read_manifest(manifest)
                     if e.get("fault") == "gap" and gaps)
    assert sorted(logged) == skipped


def test_a_silent_connection_times_out_reconnects_and_resumes(pipeline, tmp_path):
    start(pipeline, tmp_path, "okx", "--rate", "50", "--silence-after", "2", "--silence-for", "4")
    ingest = pipeline["ingest-okx"]
    wait_for(lambda: ingest.metric("collector_message_timeouts_total") >= 1, 30, what="message timeout")
    wait_for(lambda: ingest.metric("collector_websocket_reconnects_total") >= 1, 30, what="reconnect")
    received = ingest.metric("collector_messages_received_total")
    wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 50, 30, what="data after the silence")
    wait_for(lambda: ingest.health()["status"] == "healthy", 30, what="healthy again")


def test_a_dropped_connection_reconnects_with_backoff_and_logs_the_outage(pipeline, tmp_path):
    start(pipeline, tmp_path, "bybit", "--rate", "50", "--disconnect-every", "1.5")
    ingest = pipeline["ingest-bybit"]
    wait_for(lambda: ingest.metric("collector_websocket_reconnects_total") >= 2, 30, what="two reconnects")
    received = ingest.metric("collector_messages_received_total")
    wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 50, 30, what="data after reconnecting")
    pipeline.seal_and_archive()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    outages = con.execute("SELECT symbol, data_type, count(*), min(end_time - start_time) FROM gaps "
                          "WHERE kind = 'disconnect' GROUP BY ALL").fetchall()
    streams = {(s, d) for s in topology.DEFAULT_SYMBOLS["bybit"].split(",") for d in ("orderbook", "trade")}
    assert {(s, d) for s, d, _, _ in outages} == streams, "every stream of the connection gets an outage row"
    assert all(n >= 1 and shortest > 0 for _, _, n, shortest in outages)
    assert pipeline["check"].metric("collector_sequence_gaps_total") == 0, "a reconnect starts a new epoch: no gap"


def test_a_garbage_stream_trips_the_parse_breaker(pipeline, tmp_path):
    start(pipeline, tmp_path, "binance", "--rate", "200", "--malformed-every", "1", feeds="trades")
    ingest = pipeline["ingest-binance"]
    wait_for(lambda: ingest.metric("collector_parse_circuit_breaks_total") >= 1, 60, what="breaker trip")
    assert ingest.metric("collector_parse_errors_total") >= 50
    wait_for(lambda: ingest.metric("collector_websocket_reconnects_total") >= 1, 30, what="reconnect after the trip")
    assert ingest.popen.poll() is None


def test_a_stalled_stage_means_counted_drops_never_a_blocked_read(tmp_path):
    pipeline = Pipeline(tmp_path, env={"ZMQ_HWM": "2"})
    try:
        start(pipeline, tmp_path, "binance", "--rate", "2000", feeds="trades")
        check, ingest = pipeline["check"], pipeline["ingest-binance"]
        wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") > 0, 30, what="flowing")

        pipeline["persist"].popen.send_signal(signal.SIGSTOP)  # persist stalls: check's queue fills
        wait_for(lambda: check.metric("collector_messages_dropped_total", stage="check") > 0, 30, what="drops at check")
        health = check.health()
        assert health["status"] == "degraded" and "backpressure" in health["degraded_reason"]
        assert health["messages_dropped"] > 0

        check.popen.send_signal(signal.SIGSTOP)  # now check stalls too: ingest drops, and keeps reading
        wait_for(lambda: ingest.metric("collector_messages_dropped_total", stage="ingest") > 0, 30, what="drops at ingest")
        received = ingest.metric("collector_messages_received_total")
        wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 500, 30,
                 what="ingest reading on while everything downstream is stalled")
        health = ingest.health()
        assert health["status"] == "degraded" and "backpressure" in health["degraded_reason"]
        assert ingest.metric("collector_message_timeouts_total") == 0
    finally:
        for name in ("persist", "check"):
            pipeline[name].popen.send_signal(signal.SIGCONT)
        pipeline.close()
