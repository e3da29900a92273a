"""Coinbase Exchange adapter on every recorded frame (level2, matches, acks) and on the documented shapes."""
from __future__ import annotations

import collections

import orjson
import pytest

from pipeline.exchanges import coinbase
from pipeline.exchanges.base import Semantics
from tests.conftest import fixture_lines
from tests.exchanges.expect import check_parsed, crc_id, iso_us, only_control

EX = coinbase.EXCHANGE


def test_every_level2_frame_is_one_book_record_with_a_derived_id():
    lines = fixture_lines("coinbase/level2.jsonl")
    kinds = collections.Counter()
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        assert len(parsed.records) == 1, n
        record = parsed.records[0]
        kinds[msg["type"]] += 1
        assert record.symbol == msg["product_id"] and record.data_type == "orderbook", n
        assert record.data == line
        assert record.seq is None and record.prev is None  # level2 has no sequence: nothing to check
        if msg["type"] == "snapshot":
            assert record.timestamp_exchange is None  # a level2 snapshot carries no time
            assert record.snapshot is True
            assert record.exchange_sequence_id == crc_id(None, line)
        else:
            assert record.timestamp_exchange == iso_us(msg["time"]), n
            assert record.snapshot is False
            assert record.exchange_sequence_id == crc_id(iso_us(msg["time"]), line), n
    assert kinds == {"snapshot": 5, "l2update": 495}


def test_level2_derived_ids_differ_for_different_frames_and_repeat_for_a_repeated_frame():
    lines = fixture_lines("coinbase/level2.jsonl")
    ids = {EX.parse(line).records[0].exchange_sequence_id: line for line in lines}
    assert len(ids) == len(set(lines))
    assert EX.parse(lines[7]).records[0].exchange_sequence_id == EX.parse(bytes(lines[7])).records[0].exchange_sequence_id


def test_every_match_frame_is_one_trade_record_with_its_trade_id_and_time():
    lines = fixture_lines("coinbase/matches.jsonl")
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        (record,) = parsed.records
        assert msg["type"] in ("match", "last_match")
        assert record.symbol == msg["product_id"] and record.data_type == "trade"
        assert record.exchange_sequence_id == str(msg["trade_id"]), n
        assert record.timestamp_exchange == iso_us(msg["time"]), n
        assert (record.seq, record.prev, record.snapshot) == (msg["trade_id"], msg["trade_id"] - 1, False)
        assert record.data == line


def test_recorded_trade_ids_are_contiguous_per_product_including_last_match():
    last: dict[str, int] = {}
    for line in fixture_lines("coinbase/matches.jsonl"):
        (record,) = EX.parse(line).records
        if record.symbol in last:
            assert record.prev == last[record.symbol], (record.symbol, record.seq)
        last[record.symbol] = record.seq
    assert len(last) == 5
    assert EX.feeds["trades"].semantics is Semantics.CONTIGUOUS
    assert EX.feeds["orderbook"].semantics is Semantics.NONE


def test_subscriptions_acks_and_heartbeats_are_control():
    for line in fixture_lines("coinbase/control.jsonl"):
        only_control(EX.parse(line), "ack")
    for line in fixture_lines("coinbase/doc_examples/control.jsonl"):
        only_control(EX.parse(line), "heartbeat")


@pytest.mark.parametrize("name", ["control.jsonl", "l2_data.jsonl", "market_trades.jsonl"])
def test_advanced_trade_frames_are_a_different_api_and_never_stored(name):
    for line in fixture_lines(f"coinbase/advanced_trade/{name}"):
        parsed = EX.parse_safely(line)
        assert not parsed.records
        assert parsed.control == "unknown" or parsed.error is not None


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b'{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}', "subscribe_error"),
        (b'{"type":"error","message":"rate limit exceeded","reason":"too many requests"}', "rate_limit"),
        (b'{"type":"error","message":"Internal error"}', "error"),
        (b'{"type":"ticker","product_id":"BTC-USD","price":"1"}', "unknown"),
    ],
)
def test_documented_control_and_unknown_frames(frame, kind):
    only_control(EX.parse(frame), kind)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"match","trade_id":"x1","product_id":"BTC-USD","time":"2021-04-17T16:43:37.089723Z"}',
        b'{"type":"match","trade_id":1,"product_id":"BTC-USD","time":1618678217}',
        b'{"type":"match","trade_id":1,"time":"2021-04-17T16:43:37.089723Z"}',
        b'{"type":"match","trade_id":1,"product_id":"BTC-USD"}',
        b'{"type":"l2update","product_id":"BTC-USD","changes":{},"time":"2021-04-17T16:43:37.089723Z"}',
        b'{"type":"l2update","product_id":"BTC-USD","changes":[],"time":"yesterday"}',
        b'{"type":"snapshot","product_id":"BTC-USD","bids":[]}',
        b'{"type":"snapshot","product_id":7,"bids":[],"asks":[]}',
    ],
)
def test_wrong_or_missing_fields_are_malformed_never_a_record(frame):
    parsed = EX.parse_safely(frame)
    assert not parsed.records and parsed.error is not None


def test_times_with_other_fraction_lengths_are_read_in_full():
    frame = b'{"type":"match","trade_id":5,"product_id":"BTC-USD","time":"2021-04-17T16:43:37.0753Z"}'
    assert EX.parse(frame).records[0].timestamp_exchange == iso_us("2021-04-17T16:43:37.075300Z")


def test_connection_subscription_and_resync_messages():
    assert EX.url == "wss://ws-feed.exchange.coinbase.com"
    assert EX.connection_url("ws://127.0.0.1:9203", ["BTC-USD"], ["orderbook"]) == "ws://127.0.0.1:9203"
    # one product per message: Coinbase fails a whole request naming one unknown product
    messages = EX.subscribe_messages(["BTC-USD", "ETH-USD"], ["orderbook", "trades"])
    assert [orjson.loads(m) for m in messages] == [
        {"type": "subscribe", "product_ids": [product], "channels": ["level2_batch", "matches", "heartbeat"]}
        for product in ("BTC-USD", "ETH-USD")
    ]
    unsubscribe, subscribe = (orjson.loads(m) for m in EX.resubscribe_book("ETH-USD"))
    assert unsubscribe == {"type": "unsubscribe", "product_ids": ["ETH-USD"], "channels": ["level2_batch"]}
    assert subscribe == {"type": "subscribe", "product_ids": ["ETH-USD"], "channels": ["level2_batch"]}
    assert EX.keepalive_message is None  # the heartbeat channel keeps the connection busy
