"""Records and events, and their wire format between stages.

A ZeroMQ message carries many records at once (one message per record costs more than the rest of
the hop). It has three frames:

    frame 0  b"R"                      kind: records
    frame 1  orjson array of headers    one per record, the fields below (``Header``)
    frame 2  the records' raw JSON      every record's ``data`` bytes, concatenated in header order

The raw JSON is never decoded after ingest: check reads only frame 1 and forwards the frames as they
came, and persist turns frame 2 into an Arrow string column without copying each record.

Each header carries the record's ``number`` in its stream on its connection (1, 2, 3, ... per
exchange/symbol/data type and epoch, given by ingest): persist sees from a jump in these numbers how
many records went missing between ingest and itself (a drop at a high-water mark, a queue lost with a
killed check or persist) and writes a ``lost`` row, so that no loss in the pipeline is silent.

Events (rows of the ``gaps`` table: sequence gaps, disconnects, book resyncs, lost records) travel as
``[b"E", orjson array of event objects]`` along the same sockets.

Timestamps are integer microseconds since the Unix epoch everywhere.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import orjson

RECORDS = b"R"
EVENTS = b"E"

DATA_TYPES = ("orderbook", "trade")


class Header(NamedTuple):
    """Everything later stages need about one record, so that none of them parses ``data``."""

    exchange: str
    symbol: str
    data_type: str
    exchange_sequence_id: str
    timestamp_collector: int
    timestamp_exchange: int | None
    seq: int | None  # the number the sequence checker orders by (None: the feed has none)
    prev: int | None  # linked feeds: the id this record says came before it
    snapshot: bool  # starts a fresh chain (book snapshot); never a gap
    epoch: str  # one connection of one ingest process; a new epoch is never a gap
    size: int  # bytes of ``data`` in frame 2
    number: int  # 1, 2, 3, ... per stream and epoch: a jump tells persist that records were lost on the way


class Record(NamedTuple):
    """One event as an exchange adapter produces it, before the receipt time and epoch are added."""

    symbol: str
    data_type: str
    exchange_sequence_id: str
    timestamp_exchange: int | None
    data: bytes
    seq: int | None = None
    prev: int | None = None
    snapshot: bool = False


HEADER_LENGTH = len(Header._fields)


def now_us() -> int:
    return time.time_ns() // 1000


def encode_records(headers: Sequence[tuple], datas: Sequence[bytes]) -> list[bytes]:
    """``headers`` are plain tuples in ``Header`` field order (orjson encodes them fastest)."""
    return [RECORDS, orjson.dumps(headers), b"".join(datas)]


def encode_events(events: Sequence[dict]) -> list[bytes]:
    return [EVENTS, orjson.dumps(events)]


class WireError(ValueError):
    """A message that does not follow the wire format; counted and skipped by the receiver."""


def decode_headers(frames: Sequence[bytes]) -> list[list]:
    """The header rows of a records message, checked against the size of the data frame."""
    if len(frames) != 3 or frames[0] != RECORDS:
        raise WireError("not a records message")
    try:
        rows = orjson.loads(frames[1])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"bad header frame: {exc}") from None
    if not isinstance(rows, list):
        raise WireError("header frame is not a list")
    # The shape is checked here; field types by the consumers (check catches type errors, Arrow
    # refuses them in persist), so the hot path does not pay a Python check per field.
    try:
        sizes = [row[10] for row in rows if type(row) is list and len(row) == HEADER_LENGTH]
    except TypeError:
        raise WireError("bad header row") from None
    if len(sizes) != len(rows) or not all(type(size) is int and size >= 0 for size in sizes):
        raise WireError("bad header row")
    total = sum(sizes)
    if total != len(frames[2]):
        raise WireError("data frame size does not match the headers")
    return rows


def decode_events(frames: Sequence[bytes]) -> list[dict]:
    if len(frames) != 2 or frames[0] != EVENTS:
        raise WireError("not an events message")
    try:
        events = orjson.loads(frames[1])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"bad events frame: {exc}") from None
    if not isinstance(events, list) or not all(_valid_event(e) for e in events):
        raise WireError("events frame is not a list of gap-log rows")
    return events


_INT64 = range(-(1 << 63), 1 << 63)
_EVENT_TEXT = ("kind", "exchange", "symbol", "data_type")


def _valid_event(event: object) -> bool:
    """A row the gaps table takes: one bad row must not wedge persist's insert (and its replay) forever."""
    if type(event) is not dict or event.keys() != _EVENT_FIELDS:
        return False
    if not all(type(event[name]) is str for name in _EVENT_TEXT):
        return False
    if not all(event[name] is None or type(event[name]) is str for name in ("expected", "received")):
        return False
    if type(event["start_time"]) is not int or event["start_time"] not in _INT64:
        return False
    return all(event[name] is None or (type(event[name]) is int and event[name] in _INT64) for name in ("missing", "end_time"))


def gap_event(
    kind: str,
    exchange: str,
    symbol: str,
    data_type: str,
    start_time: int,
    end_time: int | None,
    expected: str | None = None,
    received: str | None = None,
    missing: int | None = None,
) -> dict:
    """A row of the ``gaps`` table: an interval of one stream that the archive does not fully hold.

    kind ``gap``: ids were skipped (``missing`` of them, when the feed says how many);
    ``disconnect``: the connection carrying the stream was down; ``resync``: the order book was
    unknown between a broken chain and the fresh snapshot; ``lost``: ``missing`` records that ingest
    received never reached persist (between the records with ids ``expected`` and ``received``).
    """
    return {
        "kind": kind,
        "exchange": exchange,
        "symbol": symbol,
        "data_type": data_type,
        "expected": expected,
        "received": received,
        "missing": missing,
        "start_time": start_time,
        "end_time": end_time,
    }


_EVENT_FIELDS = gap_event("", "", "", "", 0, None).keys()
