"""Rate limits, a rejected symbol, a silent stream, and several ingest processes sharing one check."""
from __future__ import annotations

import time

import pytest

from pipeline import archive_views
from tests.conftest import wait_for
from tests.e2e.harness import Pipeline


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path, env={"WS_INITIAL_RETRY_DELAY_SECS": "0.1", "WS_MAX_RETRY_DELAY_SECS": "0.2"})
    yield p
    p.close()


def test_http_429_on_connect_waits_at_least_retry_after(pipeline):
    _, port = pipeline.simulator("binance", "--rate", "50", "--rate-limit-connections", "2")
    started = time.monotonic()
    pipeline.stages("binance", port, "btcusdt", "trades")
    ingest = pipeline["ingest-binance"]
    wait_for(lambda: ingest.metric("collector_messages_received_total") > 0, 30, what="data after the rate limit")
    # two refusals, each asking for 1 s, although our own backoff would retry after 0.1-0.2 s
    assert time.monotonic() - started >= 2.0
    assert "rate limited" in ingest.output()
    assert ingest.metric("collector_websocket_reconnects_total") >= 2


@pytest.mark.parametrize("exchange, symbols, rejected", [
    ("okx", "BTC-USDT,ETH-USDT", "ETH-USDT"),
    ("bybit", "BTCUSDT,ETHUSDT", "ETHUSDT"),
    ("coinbase", "BTC-USD,ETH-USD", "ETH-USD"),
    ("binance", "btcusdt,ethusdt", "ETHUSDT"),
])
def test_an_unknown_symbol_is_logged_with_the_exchanges_words_and_the_others_flow(pipeline, exchange, symbols, rejected):
    _, port = pipeline.simulator(exchange, "--rate", "50", "--reject-symbols", rejected)
    pipeline.env["STREAM_STALE_SECS"] = "2"
    pipeline.stages(exchange, port, symbols, "trades")
    ingest = pipeline["ingest-" + exchange]
    good = [s for s in symbols.split(",") if s.upper() != rejected.upper()][0]
    wait_for(lambda: ingest.metric("collector_messages_received_total", symbol=good) > 20, 30, what="the good symbol flowing")
    wait_for(lambda: "says:" in ingest.output(), 10, what="the exchange's error in the log")
    assert ingest.metric("collector_messages_received_total", symbol=rejected) == 0
    # the rejected symbol's stream is stale on a live connection: /health and the gauge say so
    wait_for(lambda: ingest.health()["stale_streams"], 10, what="stale stream in /health")
    health = ingest.health()
    assert all(rejected.lower() in stream.lower() for stream in health["stale_streams"])
    assert health["status"] == "degraded" and "stale_streams" in health["degraded_reason"]
    assert ingest.metric("collector_stream_stale", symbol=next(s for s in symbols.split(",") if s.upper() == rejected.upper())) == 1
    assert ingest.metric("collector_stream_stale", symbol=good) == 0
    assert ingest.metric("collector_websocket_connected") == 1


def test_several_ingest_processes_per_exchange_push_into_one_check(pipeline):
    _, port = pipeline.simulator("binance", "--rate", "50", "--count", "40")
    pipeline.stages("binance", port, "btcusdt", "trades")
    pipeline.start("ingest-binance-2", "ingest", "--exchange", "binance", "--symbols", "ethusdt,solusdt",
                   "--feeds", "trades", "--ws-url", f"ws://127.0.0.1:{port}", "--push", pipeline.ingest_endpoint)
    wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") == 120, 60, what="3 x 40 trades")
    pipeline.seal_and_archive()
    con = archive_views.connect(archive_url=str(pipeline.archive_dir))
    assert sorted(con.execute("SELECT symbol, count(*) FROM snapshots GROUP BY 1").fetchall()) == [
        ("btcusdt", 40), ("ethusdt", 40), ("solusdt", 40)]


def test_more_symbols_than_one_connection_carries_are_split_over_connections(pipeline):
    symbols = ",".join(f"C{i}-USDT" for i in range(30))  # OKX: 25 per connection
    _, port = pipeline.simulator("okx", "--rate", "5", "--count", "3")
    pipeline.stages("okx", port, symbols, "trades")
    ingest = pipeline["ingest-okx"]
    assert ingest.health()["connections"] == {"up": 2, "total": 2}
    wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") == 90, 60, what="30 x 3 trades")
