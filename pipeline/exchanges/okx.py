"""OKX v5 public: ``books`` (400-level snapshot, then deltas) and ``trades`` on ``/ws/v5/public``.

Every push is ``{"arg": {"channel", "instId"}, "data": [...]}``. A ``books`` push is one event (a
snapshot or one delta, ``action`` says which) and is stored whole; a ``trades`` push may carry several
trades and gives one record per element. Book pushes chain by ``prevSeqId`` = the previous ``seqId``
(snapshot: ``-1``); pushes recorded before OKX added ``seqId`` (2022) get a derived id and no seq.
A ``trades`` element may aggregate ``count`` fills of one taker order at one price; its ``tradeId``
is the last of them, so it covers ids ``tradeId-count+1 .. tradeId`` and trade ids stay contiguous.

Keep-alive is the text ``ping``, answered by the text ``pong`` (not JSON).
"""
from __future__ import annotations

from typing import Sequence

import orjson

from pipeline import orderbook
from pipeline.checksum import OKX_DEPTH, okx_checksum
from pipeline.orderbook import Book

from pipeline.exchanges.base import (
    COMMON_QUOTES,
    Exchange,
    Feed,
    Parsed,
    Semantics,
    SymbolError,
    as_int,
    control,
    book_update_id,
    derived_id,
    malformed,
    ms_to_us,
    new_tuple,
    split_pair,
)
from pipeline.records import Record

BOOK, TRADE = "books", "trades"
CHANNELS = {"orderbook": BOOK, "trades": TRADE}
ARGS_PER_MESSAGE = 50  # well under the 64 KB a request's args may total

_RATE_LIMIT_CODES = ("60014",)  # Requests too frequent
# Invalid request/args, wrong URL, unknown instrument or channel, uly retired, /business-only channel,
# fee tier too low, books-l2-tbt conflict: the subscription itself was refused.
_SUBSCRIBE_CODES = ("60008", "60012", "60013", "60018", "60027", "60033", "64000", "64001", "64002", "64003", "64004")


def normalize_symbol(text: str) -> str:
    cleaned = text.strip().upper()
    parts = cleaned.split("-")
    if len(parts) > 2:  # a derivative's own instId (BTC-USDT-SWAP, BTC-USD-220527)
        if all(part.isascii() and part.isalnum() for part in parts):
            return cleaned
        raise SymbolError(f"cannot read symbol {text!r}")
    base, quote = split_pair(text, COMMON_QUOTES)
    return f"{base}-{quote}"


def connection_url(base: str, symbols: Sequence[str], feeds: Sequence[str]) -> str:
    return base.rstrip("/") + "/ws/v5/public"


def _args(symbols: Sequence[str], feeds: Sequence[str]) -> list[dict]:
    return [{"channel": CHANNELS[feed], "instId": symbol} for symbol in symbols for feed in feeds]


def subscribe_messages(symbols: Sequence[str], feeds: Sequence[str]) -> list[str]:
    args = _args(symbols, feeds)
    return [
        orjson.dumps({"op": "subscribe", "args": args[i : i + ARGS_PER_MESSAGE]}).decode()
        for i in range(0, len(args), ARGS_PER_MESSAGE)
    ]


_loads, _dumps = orjson.loads, orjson.dumps  # module globals: one lookup less per call


def _trades(symbol: str, data: list) -> Parsed:
    if not data:
        return malformed("trades push without trades")
    records = []
    for trade in data:
        if type(trade) is not dict:  # orjson makes plain dicts only
            return malformed("trade is not an object")
        # OKX sends tradeId and ts as short digit strings. Those are converted right here: up to 18 digits
        # always fit in 64 bits and up to 15 still do in microseconds, so the calls and range checks of
        # as_int / ms_to_us can be skipped; anything else goes to them, for the same checks and errors.
        text_id = trade["tradeId"]
        if type(text_id) is str and len(text_id) < 19 and text_id.isdigit() and text_id.isascii():
            trade_id = int(text_id)
        else:
            trade_id = as_int(text_id)
        count = as_int(trade["count"]) if "count" in trade else 1
        if not 1 <= count <= trade_id + 1:  # aggregates tradeId-count+1 .. tradeId, ids start at 0
            return malformed(f"trade {trade_id} aggregating {count} trades")
        ts = trade["ts"]
        if type(ts) is str and len(ts) < 16 and ts.isdigit() and ts.isascii():
            ts = int(ts) * 1000
        else:
            ts = ms_to_us(ts)
        # The record's data is this one trade, re-serialised (the push may hold several).
        record = (symbol, "trade", str(trade_id), ts, _dumps(trade), trade_id, trade_id - count, False)
        records.append(new_tuple(Record, record))
    return new_tuple(Parsed, (records, None, None, None, None))


def _book(symbol: str, msg: dict, data: list, frame: bytes) -> Parsed:
    action = msg.get("action")
    if len(data) != 1 or not isinstance(data[0], dict) or action not in ("snapshot", "update"):
        return malformed("books push without one data element and an action")
    book = data[0]
    asks, bids = book.get("asks"), book.get("bids")
    if not isinstance(asks, list) or not isinstance(bids, list):
        return malformed("books push without asks/bids")
    ts = ms_to_us(book["ts"])
    snapshot = action == "snapshot"
    if "seqId" not in book:  # pushes from before OKX added seqId/prevSeqId
        return Parsed((Record(symbol, "orderbook", derived_id(ts, frame), ts, frame, snapshot=snapshot),))
    seq = as_int(book["seqId"])
    prev = as_int(book["prevSeqId"]) if "prevSeqId" in book else None
    if prev == seq and not snapshot and not asks and not bids:
        # No change for about a minute: OKX repeats the last seqId with empty sides to show the
        # channel is alive. It is not an event (and would collide with the last one's id).
        return control("heartbeat", f"books {symbol} {seq}")
    snapshot = snapshot or prev == -1
    return Parsed((Record(symbol, "orderbook", book_update_id(seq, snapshot), ts, frame, seq, prev, snapshot),))


def parse(frame: bytes) -> Parsed:
    if frame == b"pong":
        return control("pong")
    msg = _loads(frame)
    # orjson builds plain dicts and lists, so an exact type test says the same as isinstance, a bit cheaper
    if type(msg) is not dict:
        return malformed("not a JSON object")
    arg = msg.get("arg")
    data = msg.get("data")
    if type(arg) is dict and type(data) is list:
        channel = arg.get("channel")
        symbol = arg.get("instId")
        if type(symbol) is not str or not symbol:
            return malformed("push without instId")
        if channel == TRADE:
            return _trades(symbol, data)
        if channel == BOOK:
            return _book(symbol, msg, data, frame)
        return control("unknown", f"channel {channel!r:.40}")
    event = msg.get("event")
    if event == "subscribe" or event == "unsubscribe":
        return control("ack", frame[:200].decode("utf-8", "replace"))
    if event == "error":
        code = str(msg.get("code"))
        text = f"{code}: {msg.get('msg')}"
        if code in _RATE_LIMIT_CODES:
            return control("rate_limit", text)
        if code in _SUBSCRIBE_CODES:
            return control("subscribe_error", text)
        return control("error", text)
    if event == "notice":  # e.g. 64008: the connection closes soon for a service upgrade
        return control("info", f"{msg.get('code')}: {msg.get('msg')}")
    if event == "channel-conn-count":
        return control("info", f"{msg.get('channel')} connections: {msg.get('connCount')}")
    if event == "channel-conn-count-error":
        return control("error", f"{msg.get('channel')} connection limit reached: {msg.get('connCount')}")
    return control("unknown", frame[:200].decode("utf-8", "replace"))


def resubscribe_book(symbol: str) -> list[str]:
    arg = {"channel": BOOK, "instId": symbol}
    return [
        orjson.dumps({"op": "unsubscribe", "args": [arg]}).decode(),
        orjson.dumps({"op": "subscribe", "args": [arg]}).decode(),
    ]


def verify_book(book: Book | None, record: Record) -> tuple[Book | None, bool]:
    """The book after this ``books`` record, and whether the record's checksum matched it.

    A record without a checksum (OKX deprecated the field; live frames may carry 0) always matches.
    """
    try:
        message = orderbook.decode("okx", record.data)
    except orderbook.BookDecodeError:
        return None, False
    book = orderbook.apply(book, message)
    if book is None or message.checksum is None:
        return book, True
    bids, asks = book.top(OKX_DEPTH)
    return book, okx_checksum(bids, asks) == message.checksum


EXCHANGE = Exchange(
    name="okx",
    url="wss://ws.okx.com:8443",
    feeds={
        # An idle book sends an empty heartbeat push about once a minute (a control, not a record).
        "orderbook": Feed("orderbook", BOOK, Semantics.LINKED, cadence_secs=120.0),
        "trades": Feed("trade", TRADE, Semantics.CONTIGUOUS, cadence_secs=300.0),
    },
    normalize_symbol=normalize_symbol,
    connection_url=connection_url,
    subscribe_messages=subscribe_messages,
    parse=parse,
    # OKX recommends fewer than 30 400-level book channels per connection; subscribe, unsubscribe
    # and login requests are limited to 480 per hour per connection (a resync costs two).
    max_symbols_per_connection=25,
    subscribe_interval_secs=0.5,
    keepalive_secs=20.0,
    keepalive_message="ping",
    resubscribe_book=resubscribe_book,
    verify_book=verify_book,
)
