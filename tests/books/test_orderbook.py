"""The L2 book model (table-driven), the decoding of every recorded book frame of every exchange,
and rebuilds of real recorded streams: OKX checksums match the exchange's on every frame, Bybit's
book is never crossed."""
from __future__ import annotations

import json
import statistics
import time
from decimal import Decimal

import orjson
import pytest

from pipeline.checksum import okx_checksum
from pipeline.orderbook import DELTA, SNAPSHOT, Book, BookDecodeError, apply, decode, is_zero
from tests.books.helpers import RefBook, ref_okx_checksum
from tests.conftest import fixture_lines

# -- the model ------------------------------------------------------------------------------------

# (name, snapshot (bids, asks), deltas [(bids, asks)], expected top-3 (bids, asks))
CASES = [
    ("snapshot is sorted best first whatever the input order",
     ([["99", "1"], ["101", "2"], ["100", "3"]], [["105", "1"], ["103", "2"], ["104", "3"]]), [],
     ([("101", "2"), ("100", "3"), ("99", "1")], [("103", "2"), ("104", "3"), ("105", "1")])),
    ("ordered by number, not by text",
     ([["9.5", "1"], ["10", "1"], ["100", "1"]], [["1000", "1"], ["200", "1"], ["30", "1"]]), [],
     ([("100", "1"), ("10", "1"), ("9.5", "1")], [("30", "1"), ("200", "1"), ("1000", "1")])),
    ("a delta size is absolute, not added",
     ([["100", "1"]], [["101", "1"]]), [([["100", "5"]], [["101", "0.5"]])],
     ([("100", "5")], [("101", "0.5")])),
    ("zero removes, in every spelling",
     ([["100", "1"], ["99", "1"], ["98", "1"], ["97", "1"]], [["101", "1"]]),
     [([["100", "0"], ["99", "0.0"], ["98", "0.00000000"]], [["101", "0E-8"]])],
     ([("97", "1")], [])),
    ("removing an absent level is a no-op",
     ([["100", "1"]], [["101", "1"]]), [([["50", "0"]], [["200", "0"]])],
     ([("100", "1")], [("101", "1")])),
    ("a new level lands in place",
     ([["100", "1"], ["98", "1"]], [["101", "1"], ["103", "1"]]), [([["99", "2"]], [["102", "2"]])],
     ([("100", "1"), ("99", "2"), ("98", "1")], [("101", "1"), ("102", "2"), ("103", "1")])),
    ("zero sizes in a snapshot are not levels",
     ([["100", "0"], ["99", "1"]], [["101", "0.0"], ["102", "1"]]), [],
     ([("99", "1")], [("102", "1")])),
    ("one price, two spellings, one level (the last spelling)",
     ([["5.1", "1"]], [["6", "1"]]), [([["5.10", "2"]], [["6.0", "0"]])],
     ([("5.10", "2")], [])),
    ("the strings are kept exactly as sent",
     ([["31883000.00000000", "0.03096742"]], [["9.9E-7", "120.5"]]), [],
     ([("31883000.00000000", "0.03096742")], [("9.9E-7", "120.5")])),
    ("a later snapshot replaces everything",
     ([["100", "1"]], [["101", "1"]]), [],
     ([("100", "1")], [("101", "1")])),
    ("levels of a delta apply in order (the last one for a price stands)",
     ([["100", "1"]], [["101", "1"]]), [([["100", "0"], ["100", "7"]], [["101", "3"], ["101", "0"]])],
     ([("100", "7")], [])),
]


@pytest.mark.parametrize("name, snapshot, deltas, expected", CASES, ids=[c[0] for c in CASES])
def test_book_model(name, snapshot, deltas, expected):
    book = Book.from_snapshot(*snapshot)
    for bids, asks in deltas:
        book.apply_delta(bids, asks)
    assert book.top(3) == expected
    assert book.bids(3) == expected[0] and book.asks(3) == expected[1]
    assert book.depth() == (len(book.bids()), len(book.asks()))


def test_snapshot_resets_and_top_n_limits():
    book = Book.from_snapshot([[str(100 - i), "1"] for i in range(50)], [[str(101 + i), "1"] for i in range(50)])
    assert book.depth() == (50, 50) and len(book) == 100
    assert [p for p, _ in book.bids(25)] == [str(100 - i) for i in range(25)]
    assert book.best_bid() == ("100", "1") and book.best_ask() == ("101", "1")
    book.apply_snapshot([["1", "1"]], [])
    assert book.top(10) == ([("1", "1")], []) and book.best_ask() is None
    assert not book.crossed()
    book.set_ask("0.5", "1")
    assert book.crossed()
    book.clear()
    assert len(book) == 0 and book.best_bid() is None


@pytest.mark.parametrize("size, zero", [("0", True), ("0.0", True), ("0.00000000", True), ("00", True), ("0E-8", True),
                                        ("0.0e+00", True), ("1", False), ("0.1", False), ("10", False),
                                        ("100.00", False), ("9.9E-7", False), ("1e3", False)])
def test_is_zero(size, zero):
    assert is_zero(size) is zero


def test_apply_helper_snapshot_then_delta_and_delta_on_unknown_book():
    snapshot = decode("okx", fixture_lines("okx/books.jsonl")[0])
    book = apply(None, snapshot)
    assert book is not None and book.depth() == (len(snapshot.bids), len(snapshot.asks)) == (72, 64)
    update = next(line for line in fixture_lines("okx/books.jsonl") if b'"update"' in line)
    assert apply(None, decode("okx", update)) is None


# -- decoding every recorded frame ----------------------------------------------------------------

def _levels_ok(levels):
    for level in levels:
        assert isinstance(level[0], str) and isinstance(level[1], str)
        Decimal(level[0]), Decimal(level[1])


def test_decode_every_okx_books_frame():
    kinds = []
    for line in fixture_lines("okx/books.jsonl"):
        msg = orjson.loads(line)
        m = decode("okx", line)
        kinds.append(m.kind)
        assert m.kind == (SNAPSHOT if msg["action"] == "snapshot" else DELTA)
        assert m.bids == msg["data"][0]["bids"] and m.asks == msg["data"][0]["asks"]
        assert m.checksum == msg["data"][0]["checksum"]
        assert m.seq is None and m.prev is None  # 2022 frames: no seqId
        _levels_ok(m.bids + m.asks)
    assert kinds.count(SNAPSHOT) == 3 and len(kinds) == 175


def test_decode_okx_current_shapes_books_with_seq_ids_and_books5():
    update = {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update",
              "data": [{"asks": [["1", "2", "0", "1"]], "bids": [], "ts": "1", "checksum": -5, "seqId": 123, "prevSeqId": 120}]}
    m = decode("okx", orjson.dumps(update))
    assert (m.kind, m.checksum, m.seq, m.prev) == (DELTA, -5, 123, 120)
    books5 = {"arg": {"channel": "books5", "instId": "BTC-USDT"},
              "data": [{"asks": [["2", "1", "0", "1"]], "bids": [["1", "1", "0", "1"]], "instId": "BTC-USDT", "ts": "1", "seqId": 9}]}
    m = decode("okx", orjson.dumps(books5))
    assert (m.kind, m.checksum, m.seq, m.prev) == (SNAPSHOT, None, 9, None)
    deprecated = dict(update, data=[dict(update["data"][0], checksum=0)])
    assert decode("okx", orjson.dumps(deprecated)).checksum is None  # OKX's deprecated field: 0 means none


def test_decode_every_bybit_orderbook_frame():
    lines = fixture_lines("bybit/orderbook.200.jsonl") + fixture_lines("bybit/doc_examples/orderbook.50.jsonl")
    for line in lines:
        msg = orjson.loads(line)
        m = decode("bybit", line)
        assert m.kind == (SNAPSHOT if msg["type"] == "snapshot" else DELTA)
        assert m.bids == msg["data"]["b"] and m.asks == msg["data"]["a"]
        assert m.checksum is None and m.seq == msg["data"]["u"]
        assert m.prev == (None if m.kind == SNAPSHOT else m.seq - 1)
        _levels_ok(m.bids + m.asks)


def test_decode_every_coinbase_level2_frame():
    for line in fixture_lines("coinbase/level2.jsonl"):
        msg = orjson.loads(line)
        m = decode("coinbase", line)
        if msg["type"] == "snapshot":
            assert m.kind == SNAPSHOT and m.bids == msg["bids"] and m.asks == msg["asks"]
        else:
            assert m.kind == DELTA
            assert [[c[1], c[2]] for c in msg["changes"] if c[0] == "buy"] == m.bids
            assert [[c[1], c[2]] for c in msg["changes"] if c[0] == "sell"] == m.asks
        assert m.checksum is None
        _levels_ok(m.bids + m.asks)


def test_decode_every_coinbase_advanced_trade_l2_frame():
    for line in fixture_lines("coinbase/advanced_trade/l2_data.jsonl"):
        msg = orjson.loads(line)
        m = decode("coinbase", line)
        updates = [u for event in msg["events"] for u in event["updates"]]
        assert m.kind == DELTA  # the recorded frames are updates only
        assert len(m.bids) + len(m.asks) == len(updates)
        assert len(m.bids) == sum(u["side"] == "bid" for u in updates)
        _levels_ok(m.bids + m.asks)


def test_decode_every_upbit_orderbook_frame_keeps_the_number_text():
    lines = fixture_lines("upbit/orderbook.jsonl")
    exponent_seen = False
    for line in lines:
        text = line.decode()
        m = decode("upbit", line)
        units = json.loads(text, parse_float=str, parse_int=str)["obu"]
        assert m.kind == SNAPSHOT and m.checksum is None
        assert m.bids == [[u["bp"], u["bs"]] for u in units] and m.asks == [[u["ap"], u["as"]] for u in units]
        for price, size in m.bids + m.asks:
            # each number exactly as it appears in the raw frame (orjson would give 127.0 -> 127.0 but
            # 31883000.00000000 -> 31883000.0 and 9.9E-7 -> 9.9e-07)
            assert f":{price}," in text or f":{price}}}" in text
            assert f":{size}," in text or f":{size}}}" in text
            exponent_seen |= "E" in price or "E" in size
    assert len(lines) == 102 and exponent_seen


def test_decode_binance_depth20_doc_payload_raw_and_combined():
    (line,) = fixture_lines("binance/doc_examples/depth20@100ms.jsonl")
    raw = decode("binance", line)
    combined = decode("binance", b'{"stream":"btcusdt@depth20@100ms","data":' + line + b"}")
    for m in (raw, combined):
        assert (m.kind, m.bids, m.asks, m.checksum, m.seq) == (SNAPSHOT, [["0.0024", "10"]], [["0.0026", "100"]], None, 160)


@pytest.mark.parametrize("exchange, data", [
    ("okx", b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"}}'),
    ("okx", b'{"arg":{"channel":"books","instId":"X"},"action":"weird","data":[{"asks":[],"bids":[]}]}'),
    ("bybit", b'{"success":true,"ret_msg":"pong","op":"ping"}'),
    ("coinbase", b'{"type":"heartbeat","product_id":"BTC-USD"}'),
    ("coinbase", b'{"type":"l2update","product_id":"X","changes":[["up","1","1"]]}'),
    ("upbit", b'{"status":"UP"}'),
    ("binance", b'[1,2]'),
    ("binance", b'not json'),
    ("kraken", b'{}'),
])
def test_decode_refuses_what_is_not_a_book_message(exchange, data):
    with pytest.raises(BookDecodeError):
        decode(exchange, data)


# -- rebuilding real recorded streams -------------------------------------------------------------

def test_okx_rebuild_matches_the_exchange_checksum_on_every_recorded_frame():
    books: dict[str, Book] = {}
    refs: dict[str, RefBook] = {}
    checked = 0
    for line in fixture_lines("okx/books.jsonl"):
        msg = orjson.loads(line)
        inst = msg["arg"]["instId"]
        m = decode("okx", line)
        if m.kind == SNAPSHOT:
            assert inst not in books  # per instId: the snapshot first, then updates
            books[inst] = Book.from_snapshot(m.bids, m.asks)
            refs[inst] = RefBook()
            refs[inst].snapshot(m.bids, m.asks)
        else:
            books[inst].apply_delta(m.bids, m.asks)
            refs[inst].delta(m.bids, m.asks)
        top = books[inst].top(25)
        assert okx_checksum(*top) == msg["data"][0]["checksum"], (inst, checked)
        assert ref_okx_checksum(*top) == msg["data"][0]["checksum"]
        assert top == refs[inst].top(25)
        checked += 1
    assert checked == 175 and set(books) == {"BTC-USDT", "BTC-USD-220527", "UNI-USD-SWAP"}


def test_okx_checksum_catches_a_missing_delta():
    lines = [line for line in fixture_lines("okx/books.jsonl") if b'"BTC-USDT"' in line]
    book = Book.from_snapshot(*decode("okx", lines[0])[1:3])
    mismatches = 0
    for line in lines[1:10] + lines[11:]:  # one update lost
        m = decode("okx", line)
        book.apply_delta(m.bids, m.asks)
        mismatches += okx_checksum(*book.top(25)) != m.checksum
    assert mismatches > 0


def test_bybit_rebuild_never_crosses_and_update_ids_are_contiguous():
    lines = fixture_lines("bybit/orderbook.200.jsonl")
    book = None
    last_u = None
    for n, line in enumerate(lines):
        m = decode("bybit", line)
        book = apply(book, m)
        if m.kind == DELTA:
            assert m.prev == last_u, n
        last_u = m.seq
        best_bid, best_ask = book.best_bid(), book.best_ask()
        assert Decimal(best_bid[0]) < Decimal(best_ask[0]), n
        assert not book.crossed()
    assert book.depth()[0] > 150 and book.depth()[1] > 150


def test_coinbase_level2_rebuild_matches_the_reference_book_and_never_crosses():
    books: dict[str, Book] = {}
    refs: dict[str, RefBook] = {}
    for n, line in enumerate(fixture_lines("coinbase/level2.jsonl")):
        product = orjson.loads(line)["product_id"]
        m = decode("coinbase", line)
        books[product] = apply(books.get(product), m)
        ref = refs.setdefault(product, RefBook())
        (ref.snapshot if m.kind == SNAPSHOT else ref.delta)(m.bids, m.asks)
        assert books[product].top(50) == ref.top(50), n
        assert not books[product].crossed(), n
    assert len(books) == 5


def test_okx_delta_plus_top25_plus_checksum_costs_microseconds():
    """Measured on the recorded BTC-USDT stream (400-level book, ~39 changed levels per update)."""
    lines = [line for line in fixture_lines("okx/books.jsonl") if b'"BTC-USDT"' in line]
    messages = [decode("okx", line) for line in lines]
    costs = []
    for _ in range(20):
        book = Book.from_snapshot(messages[0].bids, messages[0].asks)
        for m in messages[1:]:
            start = time.perf_counter_ns()
            book.apply_delta(m.bids, m.asks)
            ok = okx_checksum(*book.top(25)) == m.checksum
            costs.append(time.perf_counter_ns() - start)
            assert ok
    median_us = statistics.median(costs) / 1000
    print(f"OKX BTC-USDT delta + top-25 + checksum: median {median_us:.1f} us")
    assert median_us < 2000  # microseconds, with room for a loaded CI machine
