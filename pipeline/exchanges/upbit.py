"""Upbit: ``orderbook`` and ``trade`` in the SIMPLE (short-key) format.

Frames arrive as BINARY WebSocket messages carrying UTF-8 JSON; ``parse`` takes the bytes either way.
Market codes are quote-first (``KRW-BTC``). One subscription request (a JSON array) covers every
code of the connection, and there is no subscribe ack. Trade ``sid`` (sequential_id) is unique per
market but neither contiguous nor ordered; order-book messages are full top-N snapshots with no id
at all, so theirs is derived and there is never a book to resync. The server closes a connection
idle for 120 s; the text ``PING`` is answered with ``{"status":"UP"}``.

Upbit's numbers (prices, sizes) are JSON numbers: the record keeps the raw frame, never a re-encoding.
The long-key DEFAULT format is read too (``type``/``code``/``timestamp``...), should it ever arrive.
"""
from __future__ import annotations

import uuid
from typing import Sequence

import orjson

from pipeline.exchanges.base import (
    COMMON_QUOTES,
    Exchange,
    Feed,
    Parsed,
    Semantics,
    SymbolError,
    as_int,
    control,
    derived_id,
    malformed,
    ms_to_us,
    split_pair,
)
from pipeline.records import Record

# Upbit's markets, most preferred quote first: "BTC-KRW" means KRW-BTC, "BTC-USDT" means USDT-BTC.
QUOTES = ("KRW", "USDT", "BTC")
TYPES = {"orderbook": "orderbook", "trades": "trade"}

# The keys read here: (code, message time, trade time, trade id, order-book units), SIMPLE and DEFAULT.
_SIMPLE = ("cd", "tms", "ttms", "sid", "obu")
_DEFAULT = ("code", "timestamp", "trade_timestamp", "sequential_id", "orderbook_units")

_SUBSCRIPTION_ERRORS = ("WRONG_FORMAT", "NO_TICKET", "NO_TYPE", "NO_CODES", "INVALID_PARAM")


def normalize_symbol(text: str) -> str:
    first, second = split_pair(text, COMMON_QUOTES)
    if first in QUOTES:
        if second in QUOTES:  # KRW-BTC / BTC-KRW / KRWBTC: the preferred quote is the quote
            swap = QUOTES.index(first) < QUOTES.index(second)
        else:  # KRW-XRP, BTC-XTZ: Upbit's own quote-first form (only ever written with a separator)
            swap = any(separator in text for separator in "-/_:")
        if swap:
            first, second = second, first
    if second not in QUOTES:
        raise SymbolError(f"Upbit has no market {text!r}: its markets are quoted in {', '.join(QUOTES)}")
    return f"{second}-{first}"


def connection_url(base: str, symbols: Sequence[str], feeds: Sequence[str]) -> str:
    return base.rstrip("/") + "/websocket/v1"


def subscribe_messages(symbols: Sequence[str], feeds: Sequence[str]) -> list[str]:
    # One request carries every code of the connection (Upbit documents no unsubscribe).
    request: list[dict] = [{"ticket": f"crypto-collector-{uuid.uuid4()}"}, {"format": "SIMPLE"}]
    request += [{"type": TYPES[feed], "codes": list(symbols), "is_only_realtime": True} for feed in feeds]
    return [orjson.dumps(request).decode()]


def parse(frame: bytes) -> Parsed:
    msg = orjson.loads(frame)
    if not isinstance(msg, dict):
        return malformed("not a JSON object")
    ty = msg.get("ty")
    if ty is None and "type" in msg:  # DEFAULT format
        ty = msg.get("type")
        k_code, k_tms, k_ttms, k_sid, k_units = _DEFAULT
    else:
        k_code, k_tms, k_ttms, k_sid, k_units = _SIMPLE
    if ty == "trade":
        code = msg.get(k_code)
        if type(code) is not str or not code:
            return malformed("trade without code")
        sid = as_int(msg[k_sid])
        return Parsed((Record(code, "trade", str(sid), ms_to_us(msg[k_ttms]), frame, sid),))
    if ty == "orderbook":
        code = msg.get(k_code)
        if type(code) is not str or not code or not isinstance(msg.get(k_units), list):
            return malformed("orderbook without code/units")
        ts = ms_to_us(msg[k_tms])
        return Parsed((Record(code, "orderbook", derived_id(ts, frame), ts, frame),))
    if msg.get("status") == "UP":
        return control("pong")
    error = msg.get("error")
    if isinstance(error, dict):
        name = str(error.get("name"))
        text = f"{name}: {error.get('message')}"
        if "TOO_MANY" in name:
            return control("rate_limit", text)
        if name in _SUBSCRIPTION_ERRORS:
            return control("subscribe_error", text)
        return control("error", text)
    return control("unknown", frame[:200].decode("utf-8", "replace"))


EXCHANGE = Exchange(
    name="upbit",
    url="wss://api.upbit.com",
    feeds={
        "orderbook": Feed("orderbook", "orderbook", Semantics.NONE, cadence_secs=60.0),
        "trades": Feed("trade", "trade", Semantics.UNIQUE, cadence_secs=300.0),
    },
    normalize_symbol=normalize_symbol,
    connection_url=connection_url,
    subscribe_messages=subscribe_messages,
    parse=parse,
    # No cap on codes per request is documented; data requests are limited to 5/s and 100/min per
    # connection, and all of a connection's codes go in its one request.
    max_symbols_per_connection=100,
    subscribe_interval_secs=0.25,
    keepalive_secs=60.0,
    keepalive_message="PING",
    # Every orderbook message is a whole top-N book (nothing to resync), and Upbit documents no
    # unsubscribe message: there is no per-symbol resync to ask for.
    resubscribe_book=None,
)
