"""Upbit adapter on every recorded SIMPLE frame (binary frames' UTF-8 JSON), the doc examples and control."""
from __future__ import annotations

import collections

import orjson
import pytest

from pipeline.exchanges import upbit
from pipeline.exchanges.base import Semantics
from tests.conftest import fixture_lines
from tests.exchanges.expect import check_parsed, crc_id, only_control

EX = upbit.EXCHANGE


def test_every_trade_frame_is_one_trade_record_keyed_by_sid_and_timed_by_ttms():
    lines = fixture_lines("upbit/trade.jsonl")
    assert len(lines) == 168
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        (record,) = parsed.records
        assert record.symbol == msg["cd"] and record.data_type == "trade", n
        assert record.exchange_sequence_id == str(msg["sid"]), n
        assert record.timestamp_exchange == msg["ttms"] * 1000, n
        assert (record.seq, record.prev, record.snapshot) == (msg["sid"], None, False)
        assert record.data == line  # the raw bytes: Upbit's JSON numbers are never re-encoded


def test_recorded_sids_are_unique_per_market_but_not_ordered():
    seen = collections.defaultdict(set)
    inversions = 0
    last: dict[str, int] = {}
    for line in fixture_lines("upbit/trade.jsonl"):
        (record,) = EX.parse(line).records
        assert record.seq not in seen[record.symbol], record.exchange_sequence_id
        seen[record.symbol].add(record.seq)
        inversions += record.symbol in last and record.seq < last[record.symbol]
        last[record.symbol] = record.seq
    assert inversions > 0  # why the feed is UNIQUE, not CONTIGUOUS or MONOTONIC
    assert EX.feeds["trades"].semantics is Semantics.UNIQUE


def test_every_orderbook_frame_is_one_book_record_with_a_derived_id_and_tms_time():
    lines = fixture_lines("upbit/orderbook.jsonl")
    assert len(lines) == 102
    ids = set()
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        (record,) = parsed.records
        assert record.symbol == msg["cd"] and record.data_type == "orderbook", n
        assert record.timestamp_exchange == msg["tms"] * 1000, n
        assert record.exchange_sequence_id == crc_id(msg["tms"] * 1000, line), n
        assert record.seq is None and record.prev is None
        assert record.data == line
        ids.add(record.exchange_sequence_id)
    assert len(ids) == len(set(lines))
    assert EX.feeds["orderbook"].semantics is Semantics.NONE


def test_default_format_doc_trade_is_read_by_its_long_keys():
    (line,) = fixture_lines("upbit/doc_examples/trade.default.jsonl")
    msg = orjson.loads(line)
    parsed = EX.parse(line)
    check_parsed(parsed)
    (record,) = parsed.records
    assert record.symbol == msg["code"] == "KRW-BTC"
    assert record.exchange_sequence_id == str(msg["sequential_id"])
    assert record.timestamp_exchange == msg["trade_timestamp"] * 1000


def test_doc_error_example_is_an_error_control():
    for line in fixture_lines("upbit/doc_examples/control.jsonl"):
        parsed = EX.parse(line)
        only_control(parsed, "error")
        assert "INVALID_AUTH" in parsed.detail


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b'{"status":"UP"}', "pong"),
        (b'{"error":{"name":"WRONG_FORMAT","message":"bad request"}}', "subscribe_error"),
        (b'{"error":{"name":"NO_CODES","message":"codes missing"}}', "subscribe_error"),
        (b'{"error":{"name":"TOO_MANY_SUBSCRIBE","message":"slow down"}}', "rate_limit"),
        (b'{"ty":"ticker","cd":"KRW-BTC","tp":1.0}', "unknown"),
    ],
)
def test_control_frames(frame, kind):
    only_control(EX.parse(frame), kind)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"ty":"trade","cd":"KRW-BTC","ttms":1618678262000,"sid":"abc"}',
        b'{"ty":"trade","cd":"KRW-BTC","ttms":1618678262000.5,"sid":1}',
        b'{"ty":"trade","cd":"KRW-BTC","ttms":1618678262000}',
        b'{"ty":"trade","ttms":1618678262000,"sid":1}',
        b'{"ty":"orderbook","cd":"KRW-BTC","tms":1618678262640,"obu":{}}',
        b'{"ty":"orderbook","cd":"KRW-BTC","obu":[]}',
        b'{"ty":"trade","cd":"KRW-BTC","ttms":1618678262000,"sid":99999999999999999999999}',
    ],
)
def test_wrong_or_missing_fields_are_malformed_never_a_record(frame):
    parsed = EX.parse_safely(frame)
    assert not parsed.records and parsed.error is not None


def test_connection_subscription_and_keepalive():
    assert EX.connection_url(EX.url, ["KRW-BTC"], ["trades"]) == "wss://api.upbit.com/websocket/v1"
    assert EX.connection_url("ws://127.0.0.1:9203/", ["KRW-BTC"], ["trades"]) == "ws://127.0.0.1:9203/websocket/v1"
    (message,) = EX.subscribe_messages(["KRW-BTC", "KRW-ETH"], ["trades", "orderbook"])
    ticket, fmt, trade, book = orjson.loads(message)
    assert isinstance(ticket["ticket"], str) and ticket["ticket"]
    assert fmt == {"format": "SIMPLE"}
    assert trade == {"type": "trade", "codes": ["KRW-BTC", "KRW-ETH"], "is_only_realtime": True}
    assert book == {"type": "orderbook", "codes": ["KRW-BTC", "KRW-ETH"], "is_only_realtime": True}
    assert (EX.keepalive_secs, EX.keepalive_message) == (60.0, "PING")
    assert EX.resubscribe_book is None  # every orderbook message is a whole book: nothing to resync
