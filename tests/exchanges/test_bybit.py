"""Bybit adapter on every recorded frame (spot books and trades, linear trades, acks) and the doc examples."""
from __future__ import annotations

import orjson
import pytest

from pipeline.exchanges import bybit
from pipeline.exchanges.base import Semantics
from tests.conftest import fixture_lines
from tests.exchanges.expect import check_parsed, only_control

EX = bybit.EXCHANGE

BOOK_FILES = ["bybit/orderbook.200.jsonl", "bybit/doc_examples/orderbook.50.jsonl"]
TRADE_FILES = ["bybit/publicTrade.jsonl", "bybit/linear/publicTrade.jsonl", "bybit/doc_examples/publicTrade.jsonl"]


@pytest.mark.parametrize("path", BOOK_FILES)
def test_every_book_frame_is_one_whole_frame_record_keyed_by_u(path):
    for n, line in enumerate(fixture_lines(path), 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        (record,) = parsed.records
        u = msg["data"]["u"]
        assert record.symbol == msg["topic"].split(".")[-1] == msg["data"]["s"] and record.data_type == "orderbook"
        expected_id = f"{u}:snapshot" if msg["type"] == "snapshot" else str(u)  # a snapshot can show the last delta's u
        assert record.exchange_sequence_id == expected_id, n
        assert record.timestamp_exchange == msg["ts"] * 1000, n  # the message ts, not cts
        assert (record.seq, record.prev) == (u, u - 1), n
        assert record.snapshot is (msg["type"] == "snapshot"), n
        assert record.data == line  # the whole frame: the replay needs ``type``


def test_recorded_book_update_ids_are_contiguous_after_the_snapshot():
    records = [EX.parse(line).records[0] for line in fixture_lines("bybit/orderbook.200.jsonl")]
    assert records[0].snapshot and not any(r.snapshot for r in records[1:])
    for before, after in zip(records, records[1:]):
        assert after.prev == before.seq
    assert EX.feeds["orderbook"].semantics is Semantics.CONTIGUOUS


@pytest.mark.parametrize("path", TRADE_FILES)
def test_every_trade_frame_gives_one_record_per_trade(path):
    for n, line in enumerate(fixture_lines(path), 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        assert len(parsed.records) == len(msg["data"]), n
        for record, trade in zip(parsed.records, msg["data"]):
            assert record.symbol == msg["topic"].split(".")[-1] == trade["s"] and record.data_type == "trade"
            assert record.exchange_sequence_id == trade["i"], n
            assert record.timestamp_exchange == trade["T"] * 1000, n
            spot_id = trade["i"].isdigit()
            assert record.seq == (int(trade["i"]) if spot_id else None), n  # linear ids are UUIDs: no order
            assert record.prev is None
            assert orjson.loads(record.data) == trade  # the one event, not the envelope


def test_recorded_spot_trade_ids_increase_and_linear_ones_are_opaque():
    spot = [r.seq for line in fixture_lines("bybit/publicTrade.jsonl") for r in EX.parse(line).records]
    assert spot == sorted(spot) and len(set(spot)) == len(spot)
    linear = [r for line in fixture_lines("bybit/linear/publicTrade.jsonl") for r in EX.parse(line).records]
    assert len(linear) > 73 and all(r.seq is None for r in linear)
    assert EX.feeds["trades"].semantics is Semantics.MONOTONIC


def test_recorded_acks_and_doc_pongs():
    for line in fixture_lines("bybit/control.jsonl"):
        only_control(EX.parse(line), "ack")
    kinds = [EX.parse(line).control for line in fixture_lines("bybit/doc_examples/control.jsonl")]
    assert kinds == ["pong", "pong", "ack", "ack"]


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b'{"success":false,"ret_msg":"error:handler not found,topic:orderbook.50.NOPE","conn_id":"c","op":"subscribe"}',
         "subscribe_error"),
        (b'{"success":true,"ret_msg":"","conn_id":"c","op":"unsubscribe"}', "ack"),
        (b'{"op":"pong","args":["1672916271846"],"conn_id":"c"}', "pong"),
        (b'{"topic":"tickers.BTCUSDT","ts":1,"type":"snapshot","data":{}}', "unknown"),
        (b'{"hello":"world"}', "unknown"),
    ],
)
def test_control_frames(frame, kind):
    only_control(EX.parse(frame), kind)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":[],"a":[],"u":"x"}}',
        b'{"topic":"orderbook.50.BTCUSDT","ts":"x","type":"delta","data":{"s":"BTCUSDT","b":[],"a":[],"u":1}}',
        b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":{"s":"BTCUSDT","b":{},"a":[],"u":1}}',
        b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"partial","data":{"s":"BTCUSDT","b":[],"a":[],"u":1}}',
        b'{"topic":"orderbook.50.BTCUSDT","ts":1,"type":"delta","data":[]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":[{"i":"","T":1}]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":[{"i":"1","T":"soon"}]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":[{"T":1}]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":[]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":{}}',
        b'{"topic":"publicTrade.","ts":1,"type":"snapshot","data":[{"i":"1","T":1}]}',
    ],
)
def test_wrong_or_missing_fields_are_malformed_never_a_record(frame):
    parsed = EX.parse_safely(frame)
    assert not parsed.records and parsed.error is not None


def test_subscriptions_carry_at_most_ten_args_each():
    symbols = [f"S{i}USDT" for i in range(7)]
    messages = [orjson.loads(m) for m in EX.subscribe_messages(symbols, ["orderbook", "trades"])]
    assert [len(m["args"]) for m in messages] == [10, 4]
    assert all(m["op"] == "subscribe" for m in messages)
    args = [a for m in messages for a in m["args"]]
    assert args[:2] == ["orderbook.50.S0USDT", "publicTrade.S0USDT"] and len(args) == 14


def test_connection_resync_and_keepalive():
    assert EX.connection_url(EX.url, ["BTCUSDT"], ["trades"]) == "wss://stream.bybit.com/v5/public/spot"
    assert EX.connection_url("ws://127.0.0.1:9203", ["BTCUSDT"], ["trades"]) == "ws://127.0.0.1:9203/v5/public/spot"
    unsubscribe, subscribe = (orjson.loads(m) for m in EX.resubscribe_book("ETHUSDT"))
    assert unsubscribe == {"op": "unsubscribe", "args": ["orderbook.50.ETHUSDT"]}
    assert subscribe == {"op": "subscribe", "args": ["orderbook.50.ETHUSDT"]}
    assert EX.keepalive_secs == 20.0 and orjson.loads(EX.keepalive_message) == {"op": "ping"}
