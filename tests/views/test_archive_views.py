"""The archive's typed views return the right values for every exchange's real recorded messages.

Frames from ../shared/fixtures go through the real adapters, the real Store and a real seal; the
outbox is read as an archive. Expected values are computed here from the JSON itself.
"""
from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from pipeline import archive_views, exchanges
from pipeline.storage import Store, batch_from_wire
from tests.conftest import fixture_lines

TRADE_FILES = {
    "binance": ["binance/trade.jsonl"],
    "coinbase": ["coinbase/matches.jsonl"],
    "upbit": ["upbit/trade.jsonl"],
    "okx": ["okx/trades.jsonl"],
    "bybit": ["bybit/publicTrade.jsonl"],
}
BOOK_FILES = {
    "okx": ["okx/books.jsonl"],
    "bybit": ["bybit/orderbook.200.jsonl"],
    "coinbase": ["coinbase/level2.jsonl"],
    "upbit": ["upbit/orderbook.jsonl"],
    "binance": ["binance/doc_examples/depth20@100ms.jsonl"],
}


def expected_trade(exchange: str, event: dict) -> tuple[str, float, float, str]:
    """(trade id, price, quantity, the taker's side) read straight from one trade event."""
    if exchange == "binance":
        data = event["data"]
        return str(data["t"]), float(data["p"]), float(data["q"]), "sell" if data["m"] else "buy"
    if exchange == "coinbase":  # the side is the maker's
        return str(event["trade_id"]), float(event["price"]), float(event["size"]), "buy" if event["side"] == "sell" else "sell"
    if exchange == "upbit":
        return str(event["sid"]), float(event["tp"]), float(event["tv"]), "sell" if event["ab"] == "ASK" else "buy"
    if exchange == "okx":
        return event["tradeId"], float(event["px"]), float(event["sz"]), event["side"]
    return event["i"], float(event["p"]), float(event["v"]), event["S"].lower()


def archive_of(tmp_path, files: dict[str, list[str]]) -> tuple[object, list]:
    """Parses every fixture frame with its adapter, stores and seals the records; returns (views, records)."""
    rows, datas, records = [], [], []
    for exchange, paths in files.items():
        adapter = exchanges.get(exchange)
        for path in paths:
            for n, frame in enumerate(fixture_lines(path)):
                # Binance's depth doc example is the raw payload: wrap it as the combined stream sends it
                if exchange == "binance" and path.endswith("depth20@100ms.jsonl"):
                    frame = b'{"stream":"bnbbtc@depth20@100ms","data":' + frame + b"}"
                for record in adapter.parse(frame).records:
                    rows.append([exchange, record.symbol, record.data_type, record.exchange_sequence_id,
                                 1_700_000_000_000_000 + len(rows), record.timestamp_exchange, record.seq, record.prev,
                                 record.snapshot, "fixture", len(record.data)])
                    datas.append(record.data)
                    records.append((exchange, record))
    store = Store(tmp_path / "collector.duckdb")
    store.insert(pa.Table.from_batches([batch_from_wire(rows, b"".join(datas))]), [], 1)
    store.seal(tmp_path / "outbox", "", 3600)
    store.close()
    return archive_views.connect(archive_url=str(tmp_path / "outbox")), records


def test_trades_view_has_typed_price_quantity_side_and_id_for_every_exchange(tmp_path):
    con, records = archive_of(tmp_path, TRADE_FILES)
    expected = {}
    for exchange, record in records:
        trade_id, price, quantity, side = expected_trade(exchange, orjson.loads(record.data))
        expected[(exchange, record.symbol, trade_id)] = (price, quantity, side)
    rows = con.execute("SELECT exchange, symbol, trade_id, price, quantity, side FROM trades").fetchall()
    assert {r[0] for r in rows} == set(TRADE_FILES)
    got = {(e, s, t): (p, q, side) for e, s, t, p, q, side in rows}
    assert got == expected
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE trades)").fetchall())
    assert types["price"] == types["quantity"] == "DOUBLE" and types["side"] == "VARCHAR"


def test_books_view_has_top_of_book_for_every_whole_book_message(tmp_path):
    con, records = archive_of(tmp_path, BOOK_FILES)
    expected = {}
    for exchange, record in records:
        msg = orjson.loads(record.data)
        if exchange == "binance":
            book = msg["data"]
            bid, ask = book["bids"][0], book["asks"][0]
        elif exchange == "upbit":
            unit = msg["obu"][0]
            bid, ask = (unit["bp"], unit["bs"]), (unit["ap"], unit["as"])
        elif exchange == "okx" and msg.get("action") == "snapshot":
            bid, ask = msg["data"][0]["bids"][0], msg["data"][0]["asks"][0]
        elif exchange == "bybit" and msg["type"] == "snapshot":
            bid, ask = msg["data"]["b"][0], msg["data"]["a"][0]
        elif exchange == "coinbase" and msg["type"] == "snapshot":
            bid, ask = msg["bids"][0], msg["asks"][0]
        else:
            continue  # a delta: its first level is not the top of the book
        expected[(exchange, record.symbol, record.exchange_sequence_id)] = tuple(float(x) for x in (*bid[:2], *ask[:2]))
    rows = con.execute("SELECT exchange, symbol, exchange_sequence_id, bid_price, bid_size, ask_price, ask_size FROM books").fetchall()
    assert {(e, s, i): (bp, bs, ap, az) for e, s, i, bp, bs, ap, az in rows} == expected
    assert {r[0] for r in rows} == set(BOOK_FILES)
    assert all(bp < ap for *_, bp, _, ap, _ in rows), "best bid below best ask"


@pytest.mark.parametrize("view", ["snapshots", "gaps", "trades", "books"])
def test_an_empty_archive_still_has_every_view(tmp_path, view):
    con = archive_views.connect(archive_url=str(tmp_path / "nothing-yet"))
    assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)
