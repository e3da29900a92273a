"""Live smoke tests: each adapter against the real exchange (skipped unless ``pytest -m live``).

Each test connects with websocket-client to the exchange's real URL, subscribes to BTC's book and
trades, answers the keep-alive as ingest would, and parses frames until 10 data records arrived.
These need the internet and the exchange's goodwill; nothing else in the suite talks to it.
"""
from __future__ import annotations

import time

import pytest
import websocket

from pipeline.exchanges import REGISTRY
from tests.exchanges.expect import check_parsed

pytestmark = pytest.mark.live

BTC = {"binance": "BTC/USDT", "coinbase": "BTC/USD", "upbit": "BTC/KRW", "okx": "BTC/USDT", "bybit": "BTC/USDT"}
FEEDS = ["orderbook", "trades"]
WANTED = 10
BUDGET_SECS = 60.0


@pytest.mark.parametrize("name", sorted(BTC))
def test_live_exchange_delivers_parsable_records(name):
    exchange = REGISTRY[name]
    symbol = exchange.normalize_symbol(BTC[name])
    url = exchange.connection_url(exchange.url, [symbol], FEEDS)
    ws = websocket.create_connection(url, timeout=10, skip_utf8_validation=True)
    records, controls, errors = [], [], []
    try:
        for i, message in enumerate(exchange.subscribe_messages([symbol], FEEDS)):
            if i and exchange.subscribe_interval_secs:
                time.sleep(exchange.subscribe_interval_secs)
            ws.send(message)
        last_sent = started = time.monotonic()
        ws.settimeout(1.0)
        while len(records) < WANTED and time.monotonic() - started < BUDGET_SECS:
            now = time.monotonic()
            if exchange.keepalive_secs and exchange.keepalive_message and now - last_sent >= exchange.keepalive_secs:
                ws.send(exchange.keepalive_message)
                last_sent = now
            try:
                opcode, frame = ws.recv_data()  # answers WebSocket pings by itself
            except websocket.WebSocketTimeoutException:
                continue
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue
            parsed = exchange.parse_safely(frame)
            check_parsed(parsed)
            if parsed.records:
                records.extend(parsed.records)
            elif parsed.error is not None:
                errors.append((parsed.error, frame[:200]))
            else:
                controls.append((parsed.control, parsed.detail))
                assert parsed.control not in ("error", "subscribe_error", "rate_limit"), parsed
    finally:
        ws.close()
    assert not errors, errors[:3]
    assert len(records) >= WANTED, f"{name}: {len(records)} records in {BUDGET_SECS}s; controls: {controls[:5]}"
    assert {r.symbol for r in records} == {symbol}
    now_us = time.time() * 1_000_000
    for record in records:
        if record.timestamp_exchange is not None:
            assert abs(record.timestamp_exchange - now_us) < 3_600 * 1_000_000  # μs, and recent
