"""Coinbase Exchange: ``level2_batch`` books and ``matches`` trades on the public market-data feed.

``level2_batch`` (public; the same ``snapshot``/``l2update`` messages as ``level2``, batched) carries
no sequence number: its ids are derived (time + CRC of the frame) and nothing is checked on them.
``matches`` trade ids are contiguous per product. The ``heartbeat`` channel (one message per product
per second) keeps the connection busy, so there is no application-level keep-alive to send.
Every message is one event and names its product; the raw frame is the record's data.
"""
from __future__ import annotations

import datetime
import functools
from typing import Sequence

import orjson

from pipeline.exchanges.base import (
    COMMON_QUOTES,
    Exchange,
    Feed,
    Parsed,
    Semantics,
    as_int,
    control,
    derived_id,
    iso_to_us,
    malformed,
    split_pair,
)
from pipeline.records import Record

BOOK, TRADE, HEARTBEAT = "level2_batch", "matches", "heartbeat"
CHANNELS = {"orderbook": BOOK, "trades": TRADE}


def normalize_symbol(text: str) -> str:
    base, quote = split_pair(text, COMMON_QUOTES)
    return f"{base}-{quote}"


def connection_url(base: str, symbols: Sequence[str], feeds: Sequence[str]) -> str:
    return base.rstrip("/")


def subscribe_messages(symbols: Sequence[str], feeds: Sequence[str]) -> list[str]:
    # One product per message: Coinbase fails a whole request that names one unknown product.
    channels = [CHANNELS[feed] for feed in feeds] + [HEARTBEAT]
    return [orjson.dumps({"type": "subscribe", "product_ids": [symbol], "channels": channels}).decode()
            for symbol in symbols]


@functools.lru_cache(maxsize=64)
def _whole_seconds(prefix: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) to epoch seconds; consecutive messages mostly share one."""
    return int(datetime.datetime.fromisoformat(prefix + "+00:00").timestamp())


def _time(msg: dict) -> int:
    text = msg.get("time")
    if type(text) is not str:
        raise TypeError(f"expected an ISO-8601 time, got {text!r:.40}")
    # The feed's own shape, 2021-04-17T16:43:37.075351Z, on the fast path; anything else in full.
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and text[10] == "T":
        fraction = text[20:26]
        if fraction.isascii() and fraction.isdigit():
            return _whole_seconds(text[:19]) * 1_000_000 + int(fraction)
    return iso_to_us(text)


def parse(frame: bytes) -> Parsed:
    msg = orjson.loads(frame)
    if not isinstance(msg, dict):
        return malformed("not a JSON object")
    kind = msg.get("type")
    if kind == "match" or kind == "last_match":
        product = msg.get("product_id")
        if type(product) is not str or not product:
            return malformed("match without product_id")
        trade_id = as_int(msg["trade_id"])
        return Parsed((Record(product, "trade", str(trade_id), _time(msg), frame, trade_id, trade_id - 1),))
    if kind == "l2update":
        product = msg.get("product_id")
        if type(product) is not str or not product or not isinstance(msg.get("changes"), list):
            return malformed("l2update without product_id/changes")
        ts = _time(msg)
        return Parsed((Record(product, "orderbook", derived_id(ts, frame), ts, frame),))
    if kind == "snapshot":
        product = msg.get("product_id")
        if type(product) is not str or not product:
            return malformed("snapshot without product_id")
        if not isinstance(msg.get("bids"), list) or not isinstance(msg.get("asks"), list):
            return malformed("snapshot without bids/asks")
        # A level2 snapshot has no time: timestamp_exchange is NULL and the id is derived from the bytes.
        return Parsed((Record(product, "orderbook", derived_id(None, frame), None, frame, snapshot=True),))
    if kind == "heartbeat":
        return control("heartbeat", str(msg.get("product_id")))
    if kind == "subscriptions":
        return control("ack", frame[:200].decode("utf-8", "replace"))
    if kind == "error":
        text = f"{msg.get('message')}: {msg.get('reason')}"
        if "subscribe" in str(msg.get("message")).lower():
            return control("subscribe_error", text)
        if "rate" in text.lower() and "limit" in text.lower():
            return control("rate_limit", text)
        return control("error", text)
    return control("unknown", frame[:200].decode("utf-8", "replace"))


def resubscribe_book(symbol: str) -> list[str]:
    return [
        orjson.dumps({"type": "unsubscribe", "product_ids": [symbol], "channels": [BOOK]}).decode(),
        orjson.dumps({"type": "subscribe", "product_ids": [symbol], "channels": [BOOK]}).decode(),
    ]


EXCHANGE = Exchange(
    name="coinbase",
    url="wss://ws-feed.exchange.coinbase.com",
    feeds={
        "orderbook": Feed("orderbook", BOOK, Semantics.NONE, cadence_secs=60.0),
        "trades": Feed("trade", TRADE, Semantics.CONTIGUOUS, cadence_secs=300.0),
    },
    normalize_symbol=normalize_symbol,
    connection_url=connection_url,
    subscribe_messages=subscribe_messages,
    parse=parse,
    # No per-connection product cap is documented; level2 snapshots are whole books (up to MBs),
    # so a connection carries at most 100 products. 8 requests/s per IP: 0.25 s between messages.
    max_symbols_per_connection=100,
    subscribe_interval_secs=0.15,  # 8 requests/s per IP
    resubscribe_book=resubscribe_book,
)
