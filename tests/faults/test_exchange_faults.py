"""Exchanges misbehaving at a real ingest: half-open connections, disconnect storms, slow
subscription acks, in-band errors (rate limit) and a format change.

Already covered elsewhere: a silent server (tests/e2e/test_faults.py: ``--silence-after``), clean
disconnects with backoff and outage rows, the parse breaker on pure garbage, HTTP 429 and rejected
symbols (tests/e2e/test_exchange_trouble.py). Here: a TCP path that stops forwarding without
closing, a storm of disconnects every 0.5 s, acks 3 s late, and a server of the test's own
(tests/faults/wsserver.py) sending Binance trades with fields added, then missing, then of the
wrong type, to one symbol while another keeps flowing.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import psutil
import pytest

from pipeline import archive_views
from tests.conftest import free_port, wait_for
from tests.e2e.harness import Pipeline
from tests.faults.common import write_report
from tests.faults.wsserver import FakeBinance, trade

FAST = {"WS_MESSAGE_TIMEOUT_SECS": "2", "WS_INITIAL_RETRY_DELAY_SECS": "0.2", "WS_MAX_RETRY_DELAY_SECS": "1"}


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, env=FAST)
    yield p
    p.close()


class FreezingProxy:
    """TCP proxy whose ``freeze()`` stops forwarding on every open connection without closing any:
    to both ends the connection looks alive (a half-open path: a NAT or a load balancer that lost
    its state). Connections opened afterwards are forwarded normally."""

    def __init__(self, upstream: int):
        self.upstream, self.port = upstream, free_port()
        self.generation = 0
        self.accepted = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.generation += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._held += [client, server]
            generation = self.generation
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink, generation), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        try:
            while chunk := source.recv(65536):
                if self.generation != generation:
                    return  # frozen: stop reading and forwarding, keep both sockets open
                sink.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for s in self._held:
            s.close()


def test_a_half_open_connection_times_out_and_reconnects(pipeline):
    _, port = pipeline.simulator("okx", "--seed", "4", "--rate", "50")
    proxy = FreezingProxy(port)
    try:
        pipeline.stages("okx", proxy.port, "BTC-USDT,ETH-USDT")
        ingest = pipeline["ingest-okx"]
        wait_for(lambda: ingest.metric("collector_messages_received_total") > 100, 30, what="data")
        proxy.freeze()
        frozen_at = time.monotonic()
        wait_for(lambda: ingest.metric("collector_message_timeouts_total") >= 1, 30, what="message timeout")
        detected = time.monotonic() - frozen_at
        wait_for(lambda: ingest.metric("collector_websocket_reconnects_total") >= 1, 30, what="reconnect")
        received = ingest.metric("collector_messages_received_total")
        wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 100, 30, what="data again")
        wait_for(lambda: ingest.health()["status"] == "healthy", 30, what="healthy again")
        recovered = time.monotonic() - frozen_at
        assert proxy.accepted >= 2
        pipeline.seal_and_archive()
    finally:
        proxy.close()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    outages = con.execute("SELECT count(*) FROM gaps WHERE kind = 'disconnect'").fetchone()[0]
    assert outages >= 4, "every stream of the connection gets an outage row"
    figures = {"ws_message_timeout_secs": 2, "seconds_to_detect": round(detected, 1),
               "seconds_to_healthy_with_data": round(recovered, 1), "outage_rows": outages}
    print(figures)
    write_report("half_open_connection", figures)


def test_a_disconnect_storm_keeps_recovering_counts_reconnects_and_stays_bounded(pipeline):
    storm_secs = 25
    _, port = pipeline.simulator("binance", "--seed", "6", "--rate", "100", "--disconnect-every", "0.5")
    pipeline.stages("binance", port, "btcusdt,ethusdt", "trades")
    ingest, persist = pipeline["ingest-binance"], pipeline["persist"]
    wait_for(lambda: ingest.metric("collector_websocket_reconnects_total") >= 3, 30, what="the storm")
    process = psutil.Process(ingest.popen.pid)
    rss_start = process.memory_info().rss
    started = time.monotonic()
    samples = []
    while time.monotonic() - started < storm_secs:
        time.sleep(1)
        samples.append(process.memory_info().rss)
    reconnects = ingest.metric("collector_websocket_reconnects_total")
    written = persist.metric("collector_db_snapshots_written_total")
    assert ingest.popen.poll() is None
    assert reconnects >= storm_secs, "about two reconnects a second"
    assert written > 1000, "data keeps flowing between disconnects"
    growth_mb = (max(samples[len(samples) // 2 :]) - rss_start) / 2**20
    assert growth_mb < 20, f"ingest RSS grew {growth_mb:.1f} MB during the storm"
    assert "Traceback" not in ingest.output()
    pipeline.seal_and_archive()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    rows, distinct = con.execute("SELECT count(*), count(DISTINCT (symbol, exchange_sequence_id)) FROM snapshots").fetchone()
    outages = con.execute("SELECT count(*) FROM gaps WHERE kind = 'disconnect'").fetchone()[0]
    gaps = con.execute("SELECT coalesce(sum(missing), 0) FROM gaps WHERE kind = 'gap'").fetchone()[0]
    ids = con.execute("SELECT symbol, min(CAST(exchange_sequence_id AS BIGINT)), max(CAST(exchange_sequence_id AS BIGINT)), "
                      "count(*) FROM snapshots GROUP BY ALL").fetchall()
    missing = sum(hi - lo + 1 - n for _, lo, hi, n in ids)
    figures = {"storm_secs": storm_secs, "disconnect_every_secs": 0.5, "reconnects": reconnects, "records_stored": rows,
               "duplicates": rows - distinct, "outage_rows": outages, "ids_missing": missing, "ids_in_gap_rows": gaps,
               "ingest_rss_growth_mb": round(growth_mb, 1)}
    print(figures)
    write_report("disconnect_storm", figures)
    assert rows == distinct, "reconnect repeats are stored once"
    assert outages >= reconnects * 2 * 0.8, "(nearly) every reconnect leaves an outage row per stream"


def test_slow_subscription_acks_still_end_ready_and_flowing(pipeline):
    _, port = pipeline.simulator("binance", "--seed", "7", "--rate", "20", "--ack-delay", "3")
    pipeline.env.update(WS_MESSAGE_TIMEOUT_SECS="10")
    started = time.monotonic()
    pipeline.stages("binance", port, "btcusdt,ethusdt")
    ingest = pipeline["ingest-binance"]
    ready = time.monotonic() - started
    wait_for(lambda: ingest.metric("collector_control_messages_total", kind="ack") >= 2, 30, what="the late acks")
    acked = time.monotonic() - started
    received = ingest.metric("collector_messages_received_total")
    wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 50, 30, what="data")
    assert ingest.metric("collector_message_timeouts_total") == 0
    assert ingest.metric("collector_websocket_reconnects_total") == 0
    assert ingest.health()["status"] == "healthy"
    write_report("slow_acks", {"ack_delay_secs": 3, "seconds_to_ready": round(ready, 1), "seconds_to_acks": round(acked, 1)})


def test_acks_slower_than_the_data_timeout_of_a_real_exchange_do_not_loop(pipeline):
    """A real exchange sends no data before the ack: with acks 3 s late (one per subscription, in turn)
    and a 5 s message timeout, the first data comes ~6 s after connecting; each ack is a frame, so
    the timeout is not reached and the connection stays."""
    async def producer(conn) -> None:
        for i in range(1, 100_000):
            for symbol in conn.subscribed:
                await conn.send(trade(symbol, i))
            await asyncio.sleep(0.02)

    server = FakeBinance(producer, expect_streams=2, ack_delay=3)
    try:
        pipeline.env.update(WS_MESSAGE_TIMEOUT_SECS="5")
        pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
        ingest = pipeline.start("ingest-binance", "ingest", "--exchange", "binance", "--symbols", "btcusdt,ethusdt",
                                "--feeds", "trades", "--ws-url", server.url, "--push", pipeline.ingest_endpoint)
        wait_for(lambda: ingest.metric("collector_messages_received_total") > 100, 40, what="data after the slow acks")
        assert ingest.metric("collector_message_timeouts_total") == 0
        assert server.connections == 1
    finally:
        server.close()


def test_an_in_band_rate_limit_backs_off_and_resumes(pipeline):
    async def producer(conn) -> None:
        for i in range(1, 100_000):
            if conn.number == 1 and i == 100:
                await conn.send(b'{"code":-1003,"msg":"Too many requests; current limit is 1200 request weight per 1 MINUTE."}')
                await conn.send(b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":7}')
            for symbol in conn.subscribed:
                await conn.send(trade(symbol, i + 100_000 * conn.number))
            await asyncio.sleep(0.01)

    server = FakeBinance(producer, expect_streams=2)
    try:
        pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
        ingest = pipeline.start("ingest-binance", "ingest", "--exchange", "binance", "--symbols", "btcusdt,ethusdt",
                                "--feeds", "trades", "--ws-url", server.url, "--push", pipeline.ingest_endpoint)
        wait_for(lambda: ingest.metric("collector_control_messages_total", kind="rate_limit") == 1, 30, what="rate limit seen")
        wait_for(lambda: server.connections >= 2, 30, what="a new connection after backing off")
        received = ingest.metric("collector_messages_received_total")
        wait_for(lambda: ingest.metric("collector_messages_received_total") > received + 100, 30, what="data again")
        assert ingest.metric("collector_websocket_reconnects_total") >= 1
        assert "rate limit" in ingest.output() and "Traceback" not in ingest.output()
    finally:
        server.close()


# -- a format change ---------------------------------------------------------------------------------
PHASE = 100  # frames per phase, per symbol


def changing_format(conn_trades: dict) -> callable:
    """btcusdt: ids 1-100 with new fields, 101-200 with fields missing, 201-300 with wrong types,
    301-400 as usual; ethusdt: 400 normal trades alongside."""
    missing_variants = [("t",), ("E",), ("s", "t"), ("E", "t", "p")]
    wrong_variants = [{"t": "abc"}, {"t": 1.5}, {"E": "yesterday"}, {"t": [1]}, {"t": None}, {"E": {"ms": 1}},
                      {"t": True}, {"t": 2**100}]

    async def producer(conn) -> None:
        for i in range(1, 4 * PHASE + 1):
            if i <= PHASE:
                btc = trade("btcusdt", i, X="MARKET", newField={"nested": [1, 2, {"deep": None}]}, v2=True)
            elif i <= 2 * PHASE:
                btc = trade("btcusdt", i, drop=missing_variants[i % len(missing_variants)])
            elif i <= 3 * PHASE:
                btc = trade("btcusdt", i, **wrong_variants[i % len(wrong_variants)])
            else:
                btc = trade("btcusdt", i)
            await conn.send(btc)
            await conn.send(trade("ethusdt", 5000 + i))
            conn_trades["sent"] = i
            await asyncio.sleep(0.01)

    return producer


def test_a_format_change_keeps_new_fields_counts_broken_frames_and_other_symbols_flow(pipeline):
    sent: dict = {}
    server = FakeBinance(changing_format(sent), expect_streams=2)
    try:
        pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
        pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
        pipeline.start("archive", "archive")
        ingest = pipeline.start("ingest-binance", "ingest", "--exchange", "binance", "--symbols", "btcusdt,ethusdt",
                                "--feeds", "trades", "--ws-url", server.url, "--push", pipeline.ingest_endpoint)
        wait_for(lambda: sent.get("sent") == 4 * PHASE, 60, what="all phases sent")
        wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") >= 6 * PHASE, 30, what="stored")
        parse_errors = ingest.metric("collector_parse_errors_total")
        breaks = ingest.metric("collector_parse_circuit_breaks_total")
        reconnects = ingest.metric("collector_websocket_reconnects_total")
        wait_for(lambda: pipeline["check"].metric("collector_sequence_gaps_total", symbol="btcusdt") >= 1, 10,
                 what="the skipped btcusdt ids reported as a gap")
        pipeline.seal_and_archive()
        assert ingest.popen.poll() is None and "Traceback" not in ingest.output()
    finally:
        server.close()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    per_symbol = dict(con.execute("SELECT symbol, count(*) FROM snapshots GROUP BY ALL").fetchall())
    with_new_fields = con.execute("SELECT count(*) FROM snapshots WHERE symbol = 'btcusdt' AND data LIKE '%newField%'").fetchone()[0]
    gap_rows = con.execute("SELECT symbol, expected, missing FROM gaps WHERE kind = 'gap'").fetchall()
    figures = {"frames_per_phase": PHASE, "parse_errors": parse_errors, "breaker_trips": breaks, "reconnects": reconnects,
               "stored_per_symbol": per_symbol, "stored_with_new_fields": with_new_fields, "gap_rows": gap_rows}
    print(figures)
    write_report("format_change", figures)
    assert with_new_fields == PHASE, "records with added fields are stored, as received"
    assert parse_errors == 2 * PHASE, "every frame with a missing or mistyped field is counted"
    assert breaks == 0 and reconnects == 0, "a third of the frames failing is under the breaker's 50 %"
    assert per_symbol == {"btcusdt": 2 * PHASE, "ethusdt": 4 * PHASE}
    assert gap_rows == [("btcusdt", str(PHASE + 1), 2 * PHASE)], "the unparsable trades are a counted gap"


def test_a_format_change_on_most_frames_trips_the_breaker_and_the_other_symbol_flows_on(pipeline):
    async def producer(conn) -> None:
        for i in range(1, 100_000):
            for _ in range(3):  # three broken btcusdt frames for every good ethusdt one: 75 % errors
                await conn.send(trade("btcusdt", str(i) + "x"))
            await conn.send(trade("ethusdt", 1000 * conn.number + i))
            await asyncio.sleep(0.005)

    server = FakeBinance(producer, expect_streams=2)
    try:
        pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
        ingest = pipeline.start("ingest-binance", "ingest", "--exchange", "binance", "--symbols", "btcusdt,ethusdt",
                                "--feeds", "trades", "--ws-url", server.url, "--push", pipeline.ingest_endpoint)
        wait_for(lambda: ingest.metric("collector_parse_circuit_breaks_total") >= 1, 30, what="the breaker trips")
        wait_for(lambda: ingest.metric("collector_websocket_reconnects_total") >= 1, 30, what="reconnect after the trip")
        eth = ingest.metric("collector_messages_received_total", symbol="ethusdt")
        wait_for(lambda: ingest.metric("collector_messages_received_total", symbol="ethusdt") > eth + 100, 30,
                 what="ethusdt flowing on after the trip")
        assert ingest.metric("collector_messages_received_total", symbol="btcusdt") == 0
        assert "most frames of the last minute failed to parse" in ingest.output()
    finally:
        server.close()
