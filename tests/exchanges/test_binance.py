"""Binance adapter on every recorded frame: ids, times and sequence links come from the frame itself."""
from __future__ import annotations

import orjson
import pytest

from pipeline.exchanges import binance
from pipeline.exchanges.base import Semantics
from tests.conftest import fixture_lines
from tests.exchanges.expect import check_parsed, only_control

EX = binance.EXCHANGE


def test_every_recorded_trade_frame_is_one_trade_record_with_its_own_id_and_time():
    lines = fixture_lines("binance/trade.jsonl")
    assert len(lines) == 500
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        assert len(parsed.records) == 1, n
        record = parsed.records[0]
        trade = msg["data"]
        assert record.symbol == msg["stream"].split("@")[0] == trade["s"].lower(), n
        assert record.data_type == "trade"
        assert record.exchange_sequence_id == str(trade["t"]), n
        assert record.timestamp_exchange == trade["E"] * 1000, n
        assert record.data == line
        assert (record.seq, record.prev, record.snapshot) == (trade["t"], trade["t"] - 1, False)


def test_recorded_trade_ids_link_without_a_gap_within_each_symbol():
    last: dict[str, int] = {}
    for line in fixture_lines("binance/trade.jsonl"):
        record = EX.parse(line).records[0]
        if record.symbol in last:
            assert record.prev == last[record.symbol], record.exchange_sequence_id
        last[record.symbol] = record.seq
    assert set(last) == {"btcusdt", "ethusdt"}
    assert EX.feeds["trades"].semantics is Semantics.CONTIGUOUS


def test_subscribe_acks_from_the_docs_are_acks():
    for line in fixture_lines("binance/doc_examples/control.jsonl"):
        only_control(EX.parse(line), "ack")


def test_doc_depth20_payload_is_stored_only_inside_the_combined_stream_wrapper():
    (payload,) = fixture_lines("binance/doc_examples/depth20@100ms.jsonl")
    # The adapter reads combined streams: the bare payload names no symbol and is not stored.
    assert not EX.parse(payload).records
    frame = b'{"stream":"bnbbtc@depth20@100ms","data":' + payload + b"}"
    (record,) = EX.parse(frame).records
    depth = orjson.loads(payload)
    assert record.symbol == "bnbbtc" and record.data_type == "orderbook"
    assert record.exchange_sequence_id == str(depth["lastUpdateId"])
    assert record.timestamp_exchange is None  # depth20 carries no time
    assert record.seq == depth["lastUpdateId"] and record.prev is None
    assert record.data == frame
    assert EX.feeds["orderbook"].semantics is Semantics.MONOTONIC


def test_doc_trade_payload_is_stored_only_inside_the_combined_stream_wrapper():
    (payload,) = fixture_lines("binance/doc_examples/trade.jsonl")
    assert not EX.parse(payload).records
    frame = b'{"stream":"bnbbtc@trade","data":' + payload + b"}"
    (record,) = EX.parse(frame).records
    trade = orjson.loads(payload)
    assert (record.exchange_sequence_id, record.timestamp_exchange) == (str(trade["t"]), trade["E"] * 1000)


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b'{"code":2,"msg":"Invalid request: unknown stream"}', "error"),
        (b'{"code":-1003,"msg":"Too many requests"}', "rate_limit"),
        (b'{"stream":"btcusdt@kline_1m","data":{"e":"kline"}}', "unknown"),
    ],
)
def test_control_frames(frame, kind):
    only_control(EX.parse(frame), kind)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":"soon","t":1}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"t":1.5}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1}}',
        b'{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":{},"asks":[]}}',
        b"[1,2]",
        b"not json",
    ],
)
def test_wrong_or_missing_fields_are_malformed_never_a_record(frame):
    parsed = EX.parse_safely(frame)
    assert not parsed.records and parsed.error is not None


def test_connection_and_subscription_messages():
    assert EX.connection_url("ws://127.0.0.1:9203", ["btcusdt"], ["trades"]) == "ws://127.0.0.1:9203/stream"
    (message,) = EX.subscribe_messages(["btcusdt"], ["orderbook", "trades"])
    assert orjson.loads(message) == {"method": "SUBSCRIBE", "params": ["btcusdt@depth20@100ms", "btcusdt@trade"], "id": 1}
    unsubscribe, subscribe = (orjson.loads(m) for m in EX.resubscribe_book("btcusdt"))
    assert unsubscribe["method"] == "UNSUBSCRIBE" and unsubscribe["params"] == ["btcusdt@depth20@100ms"]
    assert subscribe["method"] == "SUBSCRIBE" and subscribe["params"] == ["btcusdt@depth20@100ms"]
