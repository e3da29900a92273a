"""Binance spot: ``<symbol>@depth20@100ms`` books and ``<symbol>@trade`` trades on combined streams.

The combined-stream endpoint wraps every payload as ``{"stream": "<name>", "data": {...}}``, which is
the only place a depth20 message names its symbol. The server pings every 20 s and websocket-client
answers with a pong by itself; there is no application-level keep-alive.
"""
from __future__ import annotations

from typing import Sequence

import orjson

from pipeline.exchanges.base import (
    COMMON_QUOTES,
    MAX_INT,
    Exchange,
    Feed,
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

BOOK, TRADE = "@depth20@100ms", "@trade"
MAX_MS = MAX_INT // 1000
STREAMS = {"orderbook": BOOK, "trades": TRADE}


def normalize_symbol(text: str) -> str:
    base, quote = split_pair(text, COMMON_QUOTES)
    return (base + quote).lower()


def connection_url(base: str, symbols: Sequence[str], feeds: Sequence[str]) -> str:
    return base.rstrip("/") + "/stream"


def _streams(symbols: Sequence[str], feeds: Sequence[str]) -> list[str]:
    return [symbol + STREAMS[feed] for symbol in symbols for feed in feeds]


def subscribe_messages(symbols: Sequence[str], feeds: Sequence[str]) -> list[str]:
    # One symbol per message: Binance fails a whole request that names one unknown stream.
    return [
        orjson.dumps({"method": "SUBSCRIBE", "params": _streams([symbol], feeds), "id": i + 1}).decode()
        for i, symbol in enumerate(symbols)
    ]


def parse(frame: bytes) -> Parsed:
    msg = orjson.loads(frame)
    if not isinstance(msg, dict):
        return malformed("not a JSON object")
    stream = msg.get("stream")
    data = msg.get("data")
    if isinstance(stream, str) and isinstance(data, dict):
        symbol, _, channel = stream.partition("@")
        if channel == "trade":
            trade_id, event_time = data["t"], data["E"]
            if type(trade_id) is int and type(event_time) is int and 0 <= trade_id <= MAX_INT and 0 <= event_time <= MAX_MS:
                event_time *= 1000  # the common case, checked inline
            else:
                trade_id, event_time = as_int(trade_id), ms_to_us(event_time)
            record = new_tuple(Record, (symbol, "trade", str(trade_id), event_time, frame, trade_id, trade_id - 1, False))
            return new_tuple(Parsed, ((record,), None, None, None, None))
        if channel == "depth20@100ms":
            update_id = as_int(data["lastUpdateId"])
            if not isinstance(data.get("bids"), list) or not isinstance(data.get("asks"), list):
                return malformed("depth message without bids/asks")
            return Parsed(records=(Record(symbol, "orderbook", str(update_id), None, frame, update_id),))
        if data.get("e") == "serverShutdown":
            return control("info", "server shutdown announced")
        return control("unknown", stream)
    if "result" in msg and "id" in msg:
        return control("ack")
    error = msg.get("error")
    if isinstance(error, dict):
        msg = error
    if "code" in msg and "msg" in msg:
        text = f"{msg['code']}: {msg['msg']}"
        if msg.get("code") in (-1003, 429):
            return control("rate_limit", text)
        return control("subscribe_error" if error is not None else "error", text)
    return control("unknown", frame[:200].decode("utf-8", "replace"))


def resubscribe_book(symbol: str) -> list[str]:
    stream = symbol + BOOK
    return [
        orjson.dumps({"method": "UNSUBSCRIBE", "params": [stream], "id": 901}).decode(),
        orjson.dumps({"method": "SUBSCRIBE", "params": [stream], "id": 902}).decode(),
    ]


EXCHANGE = Exchange(
    name="binance",
    url="wss://stream.binance.com:9443",
    feeds={
        "orderbook": Feed("orderbook", "depth20@100ms", Semantics.MONOTONIC, cadence_secs=5.0),
        "trades": Feed("trade", "trade", Semantics.CONTIGUOUS, cadence_secs=300.0),
    },
    normalize_symbol=normalize_symbol,
    connection_url=connection_url,
    subscribe_messages=subscribe_messages,
    parse=parse,
    max_symbols_per_connection=200,
    subscribe_interval_secs=0.25,  # 5 control messages/s per connection
    resubscribe_book=resubscribe_book,
)
