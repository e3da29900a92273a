"""What an exchange adapter is: constants and pure functions, no I/O.

An adapter knows its exchange's URL, how to subscribe to books and trades for some symbols, how to
keep a connection alive, and how to turn one received frame into records or a control event. The
ingest stage owns the connection; the adapter never touches a socket, so every adapter is tested on
real recorded frames without a network.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import zlib
from typing import Callable, NamedTuple, Sequence

from pipeline.records import Record


class Semantics(enum.Enum):
    """What a feed's ids promise; the sequence checker reports a gap only where ids say one happened."""

    CONTIGUOUS = "contiguous"  # each id is the previous + 1 (or, with ``prev``, continues it exactly)
    LINKED = "linked"  # each record names the id before it (``prev``); ids jump
    MONOTONIC = "monotonic"  # ids increase, jumps are normal: never a gap
    UNIQUE = "unique"  # ids are unique but not ordered: duplicates only
    NONE = "none"  # no exchange id (derived): nothing to check


@dataclasses.dataclass(frozen=True)
class Feed:
    data_type: str  # "orderbook" or "trade"
    channel: str  # the exchange's channel name, for logs and docs
    semantics: Semantics
    cadence_secs: float  # longest normal silence on a live symbol before the stream is called stale


class Parsed(NamedTuple):
    """What one frame was: records, a control message, or a frame that could not be parsed."""

    records: Sequence[Record] = ()
    control: str | None = None  # ack, heartbeat, pong, info, error, subscribe_error, rate_limit, unknown
    detail: str | None = None  # the exchange's own words, for the log
    error: str | None = None  # why the frame could not be parsed
    retry_after: float | None = None  # rate_limit: seconds the exchange asks us to wait


def control(kind: str, detail: str | None = None, retry_after: float | None = None) -> Parsed:
    return Parsed(control=kind, detail=detail, retry_after=retry_after)


def malformed(reason: str) -> Parsed:
    return Parsed(error=reason)


class SymbolError(ValueError):
    """A symbol the adapter cannot turn into its exchange's form."""


@dataclasses.dataclass(frozen=True)
class Exchange:
    name: str
    url: str  # the exchange's base endpoint; ``--ws-url`` replaces it
    feeds: dict[str, Feed]  # keyed by the user's feed name: "orderbook", "trades"
    normalize_symbol: Callable[[str], str]
    connection_url: Callable[[str, Sequence[str], Sequence[str]], str]  # (base, symbols, feeds)
    subscribe_messages: Callable[[Sequence[str], Sequence[str]], list[str]]  # (symbols, feeds)
    parse: Callable[[bytes], Parsed]
    max_symbols_per_connection: int
    subscribe_interval_secs: float = 0.0  # pause between subscription messages (exchange rate limits)
    keepalive_secs: float | None = None  # send ``keepalive_message`` after this long without sending
    keepalive_message: str | None = None
    resubscribe_book: Callable[[str], list[str]] | None = None  # (symbol) -> unsubscribe + subscribe
    # (book state or None, book record) -> (new state, whether the record's checksum matched)
    verify_book: Callable[[object, Record], tuple[object, bool]] | None = None

    def parse_safely(self, frame: bytes) -> Parsed:
        """``parse`` that turns any exception into a malformed-frame result: bad input never kills ingest."""
        try:
            return self.parse(frame)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the stream
            return malformed(f"{type(exc).__name__}: {exc}")


def split_pair(text: str, quotes: Sequence[str]) -> tuple[str, str]:
    """(base, quote) from BTCUSDT, btc-usdt, BTC/USDT, BTC_USDT, upper case."""
    cleaned = text.strip().upper()
    for separator in ("-", "/", "_", ":"):
        if separator in cleaned:
            base, _, quote = cleaned.partition(separator)
            if base.isalnum() and quote.isalnum():
                return base, quote
            raise SymbolError(f"cannot read symbol {text!r}")
    if not cleaned.isalnum():
        raise SymbolError(f"cannot read symbol {text!r}")
    for quote in sorted(quotes, key=len, reverse=True):
        if cleaned.endswith(quote) and len(cleaned) > len(quote):
            return cleaned[: -len(quote)], quote
    raise SymbolError(f"cannot tell base from quote in {text!r}; write it as BASE-QUOTE")


COMMON_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "GBP", "KRW", "BTC", "ETH", "BNB", "TRY", "JPY")


# Ids and times end up in BIGINT columns and in 64-bit orjson headers; ``id - 1`` must fit too.
MAX_INT = 2**63 - 2

# Record(...) and Parsed(...) go through NamedTuple's Python-level __new__ (argument binding, defaults);
# tuple.__new__(Record, all_fields) builds the same object in about half the time: hot trade parsers use it.
new_tuple = tuple.__new__


def as_int(value: object) -> int:
    """An integer field that exchanges send as a number or a string of digits; anything else is malformed.

    Values outside the signed 64-bit range are malformed too: they could not be stored or sent on.
    """
    if type(value) is str:
        if len(value) < 19 and value.isdigit() and value.isascii():
            return int(value)  # the common case; 18 digits always fit
        if not (len(value) <= 20 and value.isascii() and value.lstrip("-").isdigit()):
            raise TypeError(f"expected an integer, got {value!r:.40}")
        number = int(value)
    elif type(value) is int:
        number = value
    else:
        raise TypeError(f"expected an integer, got {value!r:.40}")
    if -MAX_INT <= number <= MAX_INT:
        return number
    raise ValueError(f"integer out of the 64-bit range: {value!r:.40}")


def ms_to_us(value: object) -> int:
    """Milliseconds (number or digit string) to microseconds."""
    micros = as_int(value) * 1000
    if -MAX_INT <= micros <= MAX_INT:
        return micros
    raise ValueError(f"time out of the 64-bit range: {value!r:.40}")


SNAPSHOT_ID_SUFFIX = ":snapshot"


def book_update_id(update_id: int, snapshot: bool) -> str:
    """The stored id of a delta feed's book message: a snapshot repeats the update id of the book it
    shows, often the id of the last delta, so it gets a form of its own - else the store would drop
    the snapshot as a repeat of that delta."""
    return f"{update_id}{SNAPSHOT_ID_SUFFIX}" if snapshot else str(update_id)


def derived_id(timestamp: int | None, frame: bytes) -> str:
    """An id for events the exchange gives none: its time and a checksum of its bytes.

    Two different messages never share it in practice; the same message received twice (a repeat
    after a reconnect) does, so it is stored once.
    """
    return f"{timestamp if timestamp is not None else 0}-{zlib.crc32(frame):08x}"


def iso_to_us(text: str) -> int:
    """ISO-8601 UTC (``2021-04-17T16:43:37.075351Z``, any number of fractional digits) to μs."""
    date_part, _, rest = text.partition("T")
    clock = rest.rstrip("Z")
    offset = ""
    for sign in ("+", "-"):
        if sign in clock:
            clock, _, tail = clock.partition(sign)
            offset = sign + tail
    whole, _, fraction = clock.partition(".")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    moment = datetime.datetime.fromisoformat(f"{date_part}T{whole}{offset or '+00:00'}")
    return int(moment.timestamp()) * 1_000_000 + micros
