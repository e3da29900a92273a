"""A small, fast L2 order book, and the decoding of every exchange's stored book messages.

``Book`` keeps each side as a dict ``sort key -> (price_str, size_str)`` plus a sorted list of the
keys, maintained with ``bisect``, and a dict ``price_str -> sort key`` so that a level the exchange
already named is updated or removed without converting its price. The key is the price as a float
(negated for bids), so both lists are best-first and the top N levels are a slice. Prices and
sizes stay the exchange's own strings (what OKX's checksum is computed over, and what a researcher
may want to re-read exactly); the float only orders them. A float orders decimal prices of up to
15 significant digits exactly, which covers every price an exchange sends; ``"5.1"`` and
``"5.10"`` are the same level.

A level's size is absolute: a delta sets it, and a size that is numerically zero (``"0"``,
``"0.0"``, ``"0.00000000"``) removes it. A snapshot replaces the whole book.

``decode(exchange, data)`` turns one stored ``orderbook`` row's ``data`` (the raw JSON as received)
into a ``BookMessage``:

    binance   depth20 on a combined stream ``{"stream", "data": {lastUpdateId, bids, asks}}`` (the raw
              payload is read too): a whole top-20 snapshot every message
    upbit     SIMPLE ``{"ty": "orderbook", "obu": [{ap, as, bp, bs}, ...]}`` (DEFAULT long keys too):
              a whole top-N snapshot; JSON *numbers*, read with ``json.loads(parse_float=str,
              parse_int=str)`` so each price keeps the exact text the exchange sent (``127.0``,
              ``31883000.00000000``). orjson would round-trip them through binary floats: trailing
              zeros lost, and anything past 17 significant digits silently rounded.
    okx       ``books``: ``action`` snapshot | update, levels ``[px, sz, "0", n]``, ``checksum``,
              ``seqId``/``prevSeqId`` when present; ``books5`` (and any push without ``action``):
              a snapshot
    bybit     ``orderbook.N``: ``type`` snapshot | delta, ``data.b``/``data.a``, update id ``data.u``
    coinbase  Exchange ``level2``/``level2_batch``: ``snapshot`` (bids/asks) and ``l2update``
              (``changes`` = ``[buy|sell, price, size]``); Advanced Trade ``l2_data`` is read too
"""
from __future__ import annotations

import json
from bisect import bisect_left, insort
from typing import Iterable, NamedTuple, Sequence

import orjson

SNAPSHOT, DELTA = "snapshot", "delta"


class BookDecodeError(ValueError):
    """A stored book row that is not a book message of its exchange."""


class BookMessage(NamedTuple):
    kind: str  # "snapshot" | "delta"
    bids: list  # levels [price_str, size_str, ...], as sent
    asks: list
    checksum: int | None  # the exchange's checksum of the book after this message (OKX), else None
    seq: int | None = None  # the exchange's update id (OKX seqId, Bybit u, Binance lastUpdateId)
    prev: int | None = None  # the update id this message follows (OKX prevSeqId, Bybit u - 1)


def is_zero(size: str) -> bool:
    """Whether a size string is zero: ``"0"``, ``"0.0"``, ``"0.00000000"``, ``"0E-8"``. A string of
    only zeros and a point is zero without a float conversion (4x faster than ``float()``)."""
    rest = size.strip("0.")
    return not rest or (rest[0] in "eE" and float(size) == 0.0)


class _Side:
    """One side of a book. ``keys`` holds the sort keys ascending (``-price`` for bids, so both sides
    are best-first); ``by_key`` maps a sort key to its ``(price, size)`` strings (top N is a slice
    and N lookups); ``key_of`` maps the price string as sent to its sort key, so updating or removing
    a level the exchange already named (the common case) needs no float conversion."""

    __slots__ = ("key_of", "by_key", "keys", "sign")

    def __init__(self, sign: float) -> None:
        self.sign = sign
        self.key_of: dict[str, float] = {}
        self.by_key: dict[float, tuple[str, str]] = {}
        self.keys: list[float] = []

    def replace(self, levels: Iterable[Sequence[str]]) -> None:
        sign = self.sign
        by_key: dict[float, tuple[str, str]] = {}
        for level in levels:
            price, size = level[0], level[1]
            rest = size.strip("0.")
            if rest and (rest[0] not in "eE" or float(size)):
                by_key[sign * float(price)] = (price, size)  # a price written twice: the last one stands
        self.by_key = by_key
        self.key_of = {level[0]: key for key, level in by_key.items()}
        self.keys = sorted(by_key)

    def update(self, levels: Iterable[Sequence[str]]) -> None:
        key_of, by_key, keys, sign = self.key_of, self.by_key, self.keys, self.sign
        for level in levels:
            price, size = level[0], level[1]
            key = key_of.get(price)
            rest = size.strip("0.")  # zero iff only zeros and a point (or an exponent of zero: "0E-8")
            if rest and (rest[0] not in "eE" or float(size)):
                if key is None:
                    key = sign * float(price)
                    old = by_key.get(key)
                    if old is None:
                        insort(keys, key)
                    else:  # known under another spelling ("5.1" / "5.10"): one level, the new spelling
                        del key_of[old[0]]
                    key_of[price] = key
                by_key[key] = (price, size)
            else:
                if key is None:
                    key = sign * float(price)
                    old = by_key.get(key)
                    if old is None:
                        continue  # removing a level the book does not have
                    price = old[0]
                del key_of[price]
                del by_key[key]
                del keys[bisect_left(keys, key)]

    def top(self, n: int | None) -> list[tuple[str, str]]:
        by_key = self.by_key
        return [by_key[key] for key in (self.keys if n is None else self.keys[:n])]


class Book:
    """An L2 book: absolute level sizes, zero removes; best-first top N per side."""

    __slots__ = ("_bids", "_asks")

    def __init__(self) -> None:
        self._bids = _Side(-1.0)
        self._asks = _Side(1.0)

    @classmethod
    def from_snapshot(cls, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> "Book":
        book = cls()
        book.apply_snapshot(bids, asks)
        return book

    def clear(self) -> None:
        self._bids.replace(())
        self._asks.replace(())

    def apply_snapshot(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        """Replaces the whole book (levels in any order; zero sizes are ignored)."""
        self._bids.replace(bids)
        self._asks.replace(asks)

    def apply_delta(self, bids: Iterable[Sequence[str]], asks: Iterable[Sequence[str]]) -> None:
        """Sets each given level's size (absolute); a zero size removes the level."""
        self._bids.update(bids)
        self._asks.update(asks)

    def set_bid(self, price: str, size: str) -> None:
        self._bids.update(((price, size),))

    def set_ask(self, price: str, size: str) -> None:
        self._asks.update(((price, size),))

    def bids(self, n: int | None = None) -> list[tuple[str, str]]:
        """The best ``n`` bids (all when ``n`` is None), best (highest) first, as (price, size) strings."""
        return self._bids.top(n)

    def asks(self, n: int | None = None) -> list[tuple[str, str]]:
        """The best ``n`` asks (all when ``n`` is None), best (lowest) first, as (price, size) strings."""
        return self._asks.top(n)

    def top(self, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        return self._bids.top(n), self._asks.top(n)

    def best_bid(self) -> tuple[str, str] | None:
        top = self._bids.top(1)
        return top[0] if top else None

    def best_ask(self) -> tuple[str, str] | None:
        top = self._asks.top(1)
        return top[0] if top else None

    def depth(self) -> tuple[int, int]:
        """(number of bid levels, number of ask levels)."""
        return len(self._bids.keys), len(self._asks.keys)

    def crossed(self) -> bool:
        """Whether the best bid is at or above the best ask (a sign the book is wrong)."""
        bids, asks = self._bids.keys, self._asks.keys
        return bool(bids and asks and -bids[0] >= asks[0])

    def __len__(self) -> int:
        return len(self._bids.keys) + len(self._asks.keys)

    def __repr__(self) -> str:
        return f"Book(bids={self.bids(3)}..., asks={self.asks(3)}..., depth={self.depth()})"


# -- decoding stored rows -------------------------------------------------------------------------

def _loads(data: str | bytes) -> dict:
    msg = orjson.loads(data)
    if not isinstance(msg, dict):
        raise BookDecodeError("not a JSON object")
    return msg


def _levels(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise BookDecodeError(f"{what} is not a list")
    return value


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is int:
        return value
    if type(value) is str and value.lstrip("-").isdigit():
        return int(value)
    raise BookDecodeError(f"expected an integer id, got {value!r:.40}")


def decode_binance(data: str | bytes) -> BookMessage:
    msg = _loads(data)
    payload = msg.get("data", msg)  # combined stream wrapper, or the raw payload
    if not isinstance(payload, dict):
        raise BookDecodeError("depth message without a payload")
    return BookMessage(SNAPSHOT, _levels(payload.get("bids"), "bids"), _levels(payload.get("asks"), "asks"), None,
                       _int_or_none(payload.get("lastUpdateId")))


def decode_upbit(data: str | bytes) -> BookMessage:
    try:
        msg = json.loads(data, parse_float=str, parse_int=str)
    except ValueError as exc:
        raise BookDecodeError(f"bad JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BookDecodeError("not a JSON object")
    if "obu" in msg:
        units, bp, bs, ap, as_ = msg["obu"], "bp", "bs", "ap", "as"
    elif "orderbook_units" in msg:
        units, bp, bs, ap, as_ = msg["orderbook_units"], "bid_price", "bid_size", "ask_price", "ask_size"
    else:
        raise BookDecodeError("orderbook without units")
    if not isinstance(units, list):
        raise BookDecodeError("orderbook units are not a list")
    try:
        bids = [[unit[bp], unit[bs]] for unit in units]
        asks = [[unit[ap], unit[as_]] for unit in units]
    except (KeyError, TypeError) as exc:
        raise BookDecodeError(f"orderbook unit without {exc}") from None
    return BookMessage(SNAPSHOT, bids, asks, None)


def decode_okx(data: str | bytes) -> BookMessage:
    msg = _loads(data)
    pushes = msg.get("data")
    if not isinstance(pushes, list) or len(pushes) != 1 or not isinstance(pushes[0], dict):
        raise BookDecodeError("books push without one data element")
    book = pushes[0]
    action = msg.get("action")
    if action is None or action == "snapshot":  # books5 (and bbo-tbt) carry no action: whole books
        kind = SNAPSHOT
    elif action == "update":
        kind = DELTA
    else:
        raise BookDecodeError(f"unknown action {action!r:.40}")
    checksum = book.get("checksum")
    if checksum is not None and type(checksum) is not int:
        checksum = _int_or_none(checksum)
    # OKX deprecated the checksum (2026): live frames carry 0 or nothing. A real CRC of 0 is a
    # one-in-four-billion event; treating 0 as "no checksum" is the only way not to flag every frame.
    return BookMessage(kind, _levels(book.get("bids"), "bids"), _levels(book.get("asks"), "asks"), checksum or None,
                       _int_or_none(book.get("seqId")), _int_or_none(book.get("prevSeqId")))


def decode_bybit(data: str | bytes) -> BookMessage:
    msg = _loads(data)
    book = msg.get("data")
    kind = msg.get("type")
    if not isinstance(book, dict) or kind not in ("snapshot", "delta"):
        raise BookDecodeError("orderbook frame without data/type")
    update_id = _int_or_none(book.get("u"))
    return BookMessage(SNAPSHOT if kind == "snapshot" else DELTA, _levels(book.get("b"), "b"), _levels(book.get("a"), "a"),
                       None, update_id, None if update_id is None or kind == "snapshot" else update_id - 1)


def decode_coinbase(data: str | bytes) -> BookMessage:
    msg = _loads(data)
    kind = msg.get("type")
    if kind == "snapshot":
        return BookMessage(SNAPSHOT, _levels(msg.get("bids"), "bids"), _levels(msg.get("asks"), "asks"), None)
    if kind == "l2update":
        bids, asks = [], []
        for change in _levels(msg.get("changes"), "changes"):
            side = change[0]
            if side == "buy":
                bids.append(change[1:3])
            elif side == "sell":
                asks.append(change[1:3])
            else:
                raise BookDecodeError(f"unknown side {side!r:.20}")
        return BookMessage(DELTA, bids, asks, None)
    if msg.get("channel") == "l2_data":  # Advanced Trade
        bids, asks, whole = [], [], False
        for event in _levels(msg.get("events"), "events"):
            whole = whole or event.get("type") == "snapshot"
            for update in _levels(event.get("updates"), "updates"):
                level = [update["price_level"], update["new_quantity"]]
                (bids if update["side"] == "bid" else asks).append(level)
        return BookMessage(SNAPSHOT if whole else DELTA, bids, asks, None)
    raise BookDecodeError(f"not a level2 message: type {kind!r:.20}")


DECODERS = {
    "binance": decode_binance,
    "upbit": decode_upbit,
    "okx": decode_okx,
    "bybit": decode_bybit,
    "coinbase": decode_coinbase,
}


def decode(exchange: str, data: str | bytes) -> BookMessage:
    """One stored ``orderbook`` row's ``data`` as a book message; ``BookDecodeError`` if it is none."""
    try:
        decoder = DECODERS[exchange]
    except KeyError:
        raise BookDecodeError(f"no book decoder for exchange {exchange!r}") from None
    try:
        return decoder(data)
    except BookDecodeError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise BookDecodeError(f"{type(exc).__name__}: {exc}") from None


def apply(book: Book | None, message: BookMessage) -> Book | None:
    """The book after ``message``: a fresh one for a snapshot, the same one updated for a delta
    (None stays None: a delta on an unknown book tells nothing)."""
    if message.kind == SNAPSHOT:
        return Book.from_snapshot(message.bids, message.asks)
    if book is not None:
        book.apply_delta(message.bids, message.asks)
    return book
