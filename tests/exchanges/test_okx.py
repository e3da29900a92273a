"""OKX adapter on every recorded frame (2022 books without seqId, 2022/2025 trades, acks) and on the
current documented shapes (seqId/prevSeqId chains, aggregated trades, heartbeats, errors, text pong)."""
from __future__ import annotations

import orjson
import pytest

from pipeline.exchanges import okx
from pipeline.exchanges.base import Semantics
from tests.conftest import fixture_lines
from tests.exchanges.expect import check_parsed, crc_id, only_control

EX = okx.EXCHANGE


def test_every_recorded_books_frame_is_one_whole_frame_record():
    lines = fixture_lines("okx/books.jsonl")
    assert len(lines) == 175
    snapshots = 0
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        (record,) = parsed.records
        (book,) = msg["data"]
        ts = int(book["ts"]) * 1000
        assert record.symbol == msg["arg"]["instId"] and record.data_type == "orderbook", n
        assert record.timestamp_exchange == ts, n
        assert record.data == line  # the whole frame: the replay needs ``action``
        assert "seqId" not in book  # 2022: before OKX added seqId/prevSeqId
        assert record.exchange_sequence_id == crc_id(ts, line), n
        assert record.seq is None and record.prev is None
        assert record.snapshot is (msg["action"] == "snapshot")
        snapshots += record.snapshot
    assert snapshots == 3


def test_every_recorded_trades_frame_gives_one_record_per_trade():
    lines = fixture_lines("okx/trades.jsonl")
    assert len(lines) == 44
    for n, line in enumerate(lines, 1):
        msg = orjson.loads(line)
        parsed = EX.parse(line)
        check_parsed(parsed)
        assert len(parsed.records) == len(msg["data"]), n
        for record, trade in zip(parsed.records, msg["data"]):
            count = int(trade.get("count", "1"))
            assert record.symbol == msg["arg"]["instId"] == trade["instId"] and record.data_type == "trade"
            assert record.exchange_sequence_id == trade["tradeId"], n
            assert record.timestamp_exchange == int(trade["ts"]) * 1000, n
            assert (record.seq, record.prev) == (int(trade["tradeId"]), int(trade["tradeId"]) - count), n
            assert orjson.loads(record.data) == trade  # the one event, not the envelope


@pytest.mark.parametrize("segment", [slice(0, 42), slice(42, 44)], ids=["R5-2022", "R8-2025"])
def test_recorded_trade_ids_are_contiguous_per_instrument_within_each_recording(segment):
    last: dict[str, int] = {}
    links = 0
    for line in fixture_lines("okx/trades.jsonl")[segment]:
        for record in EX.parse(line).records:
            if record.symbol in last:
                assert record.prev == last[record.symbol], (record.symbol, record.seq)
                links += 1
            last[record.symbol] = record.seq
    assert links
    assert EX.feeds["trades"].semantics is Semantics.CONTIGUOUS


def test_an_aggregated_trade_covers_count_ids_ending_at_its_trade_id():
    # OKX docs (trades channel): tradeId 130639474 with count 3 aggregates trades ...472, ...473, ...474.
    frame = (b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","tradeId":"130639474",'
             b'"px":"42219.9","sz":"0.12060306","side":"buy","ts":"1630048897897","count":"3","source":"0","seqId":1234}]}')
    (record,) = EX.parse(frame).records
    assert (record.exchange_sequence_id, record.seq, record.prev) == ("130639474", 130639474, 130639471)
    following = frame.replace(b'"130639474"', b'"130639475"').replace(b'"count":"3"', b'"count":"1"')
    assert EX.parse(following).records[0].prev == record.seq


def test_several_trades_in_one_push_give_several_records():
    frame = (b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":['
             b'{"instId":"BTC-USDT","tradeId":"10","px":"1","sz":"1","side":"buy","ts":"1740394561685","count":"2"},'
             b'{"instId":"BTC-USDT","tradeId":"11","px":"1","sz":"1","side":"buy","ts":"1740394561686","count":"1"}]}')
    first, second = EX.parse(frame).records
    assert (first.seq, first.prev, second.seq, second.prev) == (10, 8, 11, 10)
    assert orjson.loads(second.data)["tradeId"] == "11"


def _book(action: str, prev: int, seq: int, asks: str = '[["8476.98","415","0","13"]]', bids: str = '[]') -> bytes:
    return (f'{{"arg":{{"channel":"books","instId":"BTC-USDT"}},"action":"{action}","data":[{{"asks":{asks},'
            f'"bids":{bids},"ts":"1597026383085","checksum":0,"prevSeqId":{prev},"seqId":{seq}}}]}}').encode()


def test_current_books_frames_chain_by_prev_seq_id():
    # The sequence example of OKX's order book channel docs: 10 (snapshot), 15, 15 (no change), 3 (reset), 5.
    snapshot = EX.parse(_book("snapshot", -1, 10)).records[0]
    # a snapshot shows the id of its book, often the last delta's: its stored id must differ from it
    assert (snapshot.exchange_sequence_id, snapshot.seq, snapshot.snapshot) == ("10:snapshot", 10, True)
    assert snapshot.timestamp_exchange == 1597026383085000
    update = EX.parse(_book("update", 10, 15)).records[0]
    assert (update.seq, update.prev, update.snapshot) == (15, 10, False)
    only_control(EX.parse(_book("update", 15, 15, asks="[]")), "heartbeat")
    reset = EX.parse(_book("update", 15, 3)).records[0]
    assert (reset.seq, reset.prev) == (3, 15)
    after = EX.parse(_book("update", 3, 5)).records[0]
    assert (after.seq, after.prev) == (5, 3)
    assert EX.feeds["orderbook"].semantics is Semantics.LINKED


def test_subscribe_acks_are_acks():
    for line in fixture_lines("okx/control.jsonl"):
        only_control(EX.parse(line), "ack")


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"pong", "pong"),
        (b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}', "ack"),
        (b'{"event":"unsubscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}', "ack"),
        (b'{"event":"error","code":"60018","msg":"Wrong URL or channel:books,instId:NOPE-USDT doesn\'t exist","connId":"a4"}',
         "subscribe_error"),
        (b'{"event":"error","code":"60012","msg":"Invalid request","connId":"a4d3ae55"}', "subscribe_error"),
        (b'{"event":"error","code":"60014","msg":"Requests too frequent.","connId":"a4d3ae55"}', "rate_limit"),
        (b'{"event":"error","code":"63999","msg":"internal error","connId":"a4d3ae55"}', "error"),
        (b'{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade.","connId":"a"}',
         "info"),
        (b'{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"last":"1"}]}', "unknown"),
    ],
)
def test_control_frames(frame, kind):
    only_control(EX.parse(frame), kind)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"tradeId":"12x","ts":"1"}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"tradeId":"12","ts":1.5}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"tradeId":"12","ts":"1","count":"0"}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"tradeId":"12","ts":"1","count":"14"}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"tradeId":"-9223372036854775806","ts":"1",'
        b'"count":"9223372036854775806"}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"ts":"1"}]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":["x"]}',
        b'{"arg":{"channel":"trades"},"data":[{"tradeId":"12","ts":"1"}]}',
        b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":{},"bids":[],"ts":"1"}]}',
        b'{"arg":{"channel":"books","instId":"BTC-USDT"},"data":[{"asks":[],"bids":[],"ts":"1"}]}',
        b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":[],"bids":[],"ts":"1","seqId":"x"}]}',
        b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[]}',
        b"ping",
    ],
)
def test_wrong_or_missing_fields_are_malformed_never_a_record(frame):
    parsed = EX.parse_safely(frame)
    assert not parsed.records and parsed.error is not None


def test_connection_subscription_resync_and_keepalive():
    assert EX.connection_url(EX.url, ["BTC-USDT"], ["trades"]) == "wss://ws.okx.com:8443/ws/v5/public"
    assert EX.connection_url("ws://127.0.0.1:9203", ["BTC-USDT"], ["trades"]) == "ws://127.0.0.1:9203/ws/v5/public"
    (message,) = EX.subscribe_messages(["BTC-USDT"], ["orderbook", "trades"])
    assert orjson.loads(message) == {
        "op": "subscribe",
        "args": [{"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "BTC-USDT"}],
    }
    many = EX.subscribe_messages([f"S{i}-USDT" for i in range(EX.max_symbols_per_connection)], ["orderbook", "trades"])
    assert all(len(m.encode()) < 64 * 1024 for m in many)
    unsubscribe, subscribe = (orjson.loads(m) for m in EX.resubscribe_book("ETH-USDT"))
    assert unsubscribe == {"op": "unsubscribe", "args": [{"channel": "books", "instId": "ETH-USDT"}]}
    assert subscribe == {"op": "subscribe", "args": [{"channel": "books", "instId": "ETH-USDT"}]}
    assert (EX.keepalive_secs, EX.keepalive_message) == (20.0, "ping")
