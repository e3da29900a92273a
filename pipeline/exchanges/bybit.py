"""Bybit v5 public spot: ``orderbook.50.<S>`` (snapshot, then deltas) and ``publicTrade.<S>``.

A book frame is one event (``type`` snapshot or delta) and is stored whole; its update id ``u`` is
contiguous per topic, and a snapshot (also the ``u = 1`` after a service restart) starts the chain
afresh. A trade frame carries a list of trades and gives one record per element; spot trade ids
``i`` are digit strings that increase, linear ones are UUIDs (no order: seq is None).

Subscribe requests take at most 10 args on spot. Keep-alive: ``{"op":"ping"}`` every 20 s; the
pong comes back as ``{"success":true,"ret_msg":"pong","op":"ping",...}``. Key order differs by
category (spot ``topic,ts,type``; linear ``topic,type,ts``): fields are read by name only.
"""
from __future__ import annotations

from typing import Sequence

import orjson

from pipeline.exchanges.base import (
    book_update_id,
    COMMON_QUOTES,
    Exchange,
    Feed,
    MAX_INT,
    Parsed,
    Semantics,
    as_int,
    control,
    malformed,
    ms_to_us,
    new_tuple,
    split_pair,
)
from pipeline.records import Record

BOOK, TRADE = "orderbook.50", "publicTrade"
TOPICS = {"orderbook": BOOK, "trades": TRADE}
ARGS_PER_MESSAGE = 10  # spot's documented maximum per subscribe request


def normalize_symbol(text: str) -> str:
    base, quote = split_pair(text, COMMON_QUOTES)
    return base + quote


def connection_url(base: str, symbols: Sequence[str], feeds: Sequence[str]) -> str:
    return base.rstrip("/") + "/v5/public/spot"


def subscribe_messages(symbols: Sequence[str], feeds: Sequence[str]) -> list[str]:
    topics = [f"{TOPICS[feed]}.{symbol}" for symbol in symbols for feed in feeds]
    return [
        orjson.dumps({"op": "subscribe", "args": topics[i : i + ARGS_PER_MESSAGE]}).decode()
        for i in range(0, len(topics), ARGS_PER_MESSAGE)
    ]


_loads, _dumps = orjson.loads, orjson.dumps  # module globals: one lookup less per call
_MS_FAST_LIMIT = 10**15  # below it, ms * 1000 cannot leave the 64-bit range


def _ms_to_us(value: object) -> int:
    """``ms_to_us`` for Bybit's integer ``T`` without range checks a value below 10**15 cannot fail."""
    if type(value) is int and 0 <= value < _MS_FAST_LIMIT:
        return value * 1000
    return ms_to_us(value)  # anything else: the shared checks, errors and messages


def _text_id_seq(trade_id: str) -> int | None:
    """The seq of a trade id sent as text: the number of spot's digit string, None for a linear UUID.

    Spot ids have 19 digits, past ``as_int``'s quick path (18): ``int`` and one upper bound decide
    here, and only an id out of range goes to ``as_int`` for its error.
    """
    if not (trade_id.isascii() and trade_id.isdigit()):
        return None
    if len(trade_id) < 20:
        seq = int(trade_id)
        if seq <= MAX_INT:
            return seq
    return as_int(trade_id)


def _trades(symbol: str, data: object) -> Parsed:
    if type(data) is not list or not data:  # orjson makes plain lists and dicts only
        return malformed("publicTrade without trades")
    records = []
    for trade in data:
        if type(trade) is not dict:
            return malformed("trade is not an object")
        trade_id = trade["i"]
        if type(trade_id) is str and trade_id:
            # spot: digits, increasing; linear/inverse: a UUID, stored as given with no seq
            seq = _text_id_seq(trade_id)
        else:
            seq = as_int(trade_id)
            trade_id = str(seq)
        # The record's data is this one trade, re-serialised (the frame may hold several).
        record = (symbol, "trade", trade_id, _ms_to_us(trade["T"]), _dumps(trade), seq, None, False)
        records.append(new_tuple(Record, record))
    return new_tuple(Parsed, (records, None, None, None, None))


def _book(symbol: str, msg: dict, frame: bytes) -> Parsed:
    data = msg.get("data")
    kind = msg.get("type")
    if not isinstance(data, dict) or kind not in ("snapshot", "delta"):
        return malformed("orderbook frame without data/type")
    if not isinstance(data.get("b"), list) or not isinstance(data.get("a"), list):
        return malformed("orderbook frame without b/a")
    update_id = as_int(data["u"])
    snapshot = kind == "snapshot"
    return Parsed(
        records=(
            Record(symbol, "orderbook", book_update_id(update_id, snapshot), ms_to_us(msg["ts"]), frame, update_id,
                   update_id - 1, snapshot),
        )
    )


def parse(frame: bytes) -> Parsed:
    msg = _loads(frame)
    if type(msg) is not dict:  # orjson builds plain dicts: same answer as isinstance, a bit cheaper
        return malformed("not a JSON object")
    topic = msg.get("topic")
    if type(topic) is str:
        channel, _, symbol = topic.rpartition(".")
        if not symbol:
            return malformed(f"topic {topic!r:.40}")
        if channel == TRADE:
            return _trades(symbol, msg.get("data"))
        if channel.startswith("orderbook."):
            return _book(symbol, msg, frame)
        return control("unknown", f"topic {topic!r:.60}")
    op = msg.get("op")
    if op is not None:
        text = f"{op}: {msg.get('ret_msg')}"
        if op == "ping" or op == "pong":
            return control("pong", text) if msg.get("success", True) is not False else control("error", text)
        if msg.get("success") is False:
            return control("subscribe_error" if op == "subscribe" else "error", text)
        return control("ack", text)
    return control("unknown", frame[:200].decode("utf-8", "replace"))


def resubscribe_book(symbol: str) -> list[str]:
    topic = f"{BOOK}.{symbol}"
    return [
        orjson.dumps({"op": "unsubscribe", "args": [topic]}).decode(),
        orjson.dumps({"op": "subscribe", "args": [topic]}).decode(),
    ]


EXCHANGE = Exchange(
    name="bybit",
    url="wss://stream.bybit.com",
    feeds={
        "orderbook": Feed("orderbook", BOOK, Semantics.CONTIGUOUS, cadence_secs=60.0),
        "trades": Feed("trade", TRADE, Semantics.MONOTONIC, cadence_secs=300.0),
    },
    normalize_symbol=normalize_symbol,
    connection_url=connection_url,
    subscribe_messages=subscribe_messages,
    parse=parse,
    # A connection's args may total 21,000 characters (~450 symbols with both topics); 100 symbols
    # keeps the snapshot burst after a reconnect modest. No subscribe rate limit is documented.
    max_symbols_per_connection=100,
    subscribe_interval_secs=0.1,
    keepalive_secs=20.0,
    keepalive_message='{"op":"ping"}',
    resubscribe_book=resubscribe_book,
)
