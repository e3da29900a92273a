"""pipeline/records.py: the three-frame records message and the two-frame events message."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.records import EVENTS, RECORDS, Header, WireError, decode_events, decode_headers, encode_events, encode_records, gap_event

TRADE = b'{"e":"trade","t":101,"p":"1.5"}'
BOOK = b'{"lastUpdateId":9,"bids":[],"asks":[]}'


def header(data: bytes, **fields) -> tuple:
    """A header as ingest builds it: a plain tuple in ``Header`` field order."""
    values = dict(exchange="binance", symbol="btcusdt", data_type="trade", exchange_sequence_id="101",
                  timestamp_collector=1_723_161_255_343_123, timestamp_exchange=1_723_161_255_343_000, seq=101,
                  prev=100, snapshot=False, epoch="4242.0.1", size=len(data), number=1)
    values.update(fields)
    return tuple(values[name] for name in Header._fields)


def test_one_record_round_trips_field_by_field():
    h = header(TRADE)
    frames = encode_records([h], [TRADE])
    assert frames[0] == RECORDS and len(frames) == 3
    rows = decode_headers(frames)
    assert [Header(*row) for row in rows] == [Header(*h)]
    assert frames[2] == TRADE


def test_many_records_in_one_message_keep_their_order_and_their_bytes():
    datas = [TRADE, BOOK, b"{}", "{\"s\":\"\u00e9\u20ac\"}".encode()]
    headers = [
        header(datas[0]),
        header(datas[1], data_type="orderbook", exchange_sequence_id="9", seq=9, prev=None, timestamp_exchange=None),
        header(datas[2], symbol="ethusdt", seq=None, prev=None, snapshot=True),
        header(datas[3], exchange="upbit", symbol="KRW-BTC", exchange_sequence_id="x-1"),
    ]
    frames = encode_records(headers, datas)
    rows = decode_headers(frames)
    assert [tuple(row) for row in rows] == headers
    # the data frame splits back into the records by the sizes in header order
    offset, parts = 0, []
    for row in rows:
        parts.append(frames[2][offset: offset + row[10]])
        offset += row[10]
    assert parts == datas


def test_an_empty_records_message_decodes_to_no_rows():
    assert decode_headers(encode_records([], [])) == []


def test_decode_accepts_a_memoryview_data_frame_as_zeromq_gives_it():
    frames = encode_records([header(TRADE)], [TRADE])
    assert len(decode_headers([frames[0], frames[1], memoryview(frames[2])])) == 1


GOOD = encode_records([header(TRADE)], [TRADE])
GOOD_ROW = list(header(TRADE))

BAD_RECORDS = {
    "two frames": GOOD[:2],
    "four frames": GOOD + [b""],
    "no frames": [],
    "events kind": [EVENTS, GOOD[1], GOOD[2]],
    "unknown kind": [b"X", GOOD[1], GOOD[2]],
    "non-JSON header": [RECORDS, b"[[\"binance\",", GOOD[2]],
    "invalid UTF-8 header": [RECORDS, b"\xff\xfe", GOOD[2]],
    "header not a list": [RECORDS, orjson.dumps({"rows": []}), GOOD[2]],
    "row not a list": [RECORDS, orjson.dumps([{"size": len(TRADE)}]), GOOD[2]],
    "row too short": [RECORDS, orjson.dumps([GOOD_ROW[:10]]), GOOD[2]],
    "row too long": [RECORDS, orjson.dumps([GOOD_ROW + [0]]), GOOD[2]],
    "size not an integer": [RECORDS, orjson.dumps([GOOD_ROW[:10] + [str(len(TRADE))]]), GOOD[2]],
    "size null": [RECORDS, orjson.dumps([GOOD_ROW[:10] + [None]]), GOOD[2]],
    "data frame shorter than sizes": [RECORDS, GOOD[1], TRADE[:-1]],
    "data frame longer than sizes": [RECORDS, GOOD[1], TRADE + b" "],
    "sizes but no data": [RECORDS, GOOD[1], b""],
    "data but no headers": [RECORDS, b"[]", TRADE],
}


@pytest.mark.parametrize("frames", list(BAD_RECORDS.values()), ids=list(BAD_RECORDS))
def test_decode_headers_rejects_a_malformed_records_message(frames):
    with pytest.raises(WireError):
        decode_headers(frames)


def _with(index: int, value) -> list:
    row = list(GOOD_ROW)
    row[index] = value
    return row


# A header row can pass the frame-level checks and still carry fields of the wrong type: check's
# message handler drops a message whose checking raises on them, and persist's Arrow conversion
# refuses a stored field of the wrong type.
WRONG_TYPES = {
    "timestamp_collector a string": _with(4, "1723161255343123"),
    "timestamp_exchange a string": _with(5, "1723161255343000"),
    "seq a string": _with(6, "101"),
    "exchange a number": _with(0, 7),
}


STORED_WRONG_TYPES = {name: row for name, row in WRONG_TYPES.items() if not name.startswith("seq")}  # seq is not stored


@pytest.mark.parametrize("row", list(STORED_WRONG_TYPES.values()), ids=list(STORED_WRONG_TYPES))
def test_a_wrongly_typed_field_never_reaches_the_table(row):
    """decode_headers checks the shape; persist's Arrow conversion refuses wrong field types."""
    import pyarrow as pa

    from pipeline.storage import batch_from_wire

    try:
        rows = decode_headers([RECORDS, orjson.dumps([row]), TRADE])
    except WireError:
        return
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        batch_from_wire(rows, TRADE)


def test_decode_headers_rejects_negative_sizes_even_when_they_add_up():
    rows = [_with(10, -1), _with(10, len(TRADE) + 1)]
    with pytest.raises(WireError):
        decode_headers([RECORDS, orjson.dumps(rows), TRADE])


@pytest.mark.parametrize("row", list(WRONG_TYPES.values()), ids=list(WRONG_TYPES))
def test_a_wrongly_typed_header_row_raises_only_what_check_catches(row):
    """check's loop drops a message whose checking raises TypeError/ValueError/OverflowError."""
    from pipeline.sequence import SequenceTracker
    from stages.check import Checker, feed_semantics

    rows = decode_headers([RECORDS, orjson.dumps([row]), TRADE])
    try:
        Checker(SequenceTracker(feed_semantics)).check(rows, 0.0)
    except (TypeError, ValueError, OverflowError):
        pass


# -- events

EVENT = gap_event("gap", "binance", "btcusdt", "trade", 1, 2, expected="5", received="8", missing=3)


def test_events_round_trip():
    events = [EVENT, gap_event("disconnect", "okx", "BTC-USDT", "orderbook", 10, None)]
    frames = encode_events(events)
    assert frames[0] == EVENTS and len(frames) == 2
    assert decode_events(frames) == events


def test_gap_event_has_every_column_of_the_gaps_table():
    assert list(EVENT) == ["kind", "exchange", "symbol", "data_type", "expected", "received", "missing", "start_time", "end_time"]


BAD_EVENTS = {
    "one frame": [EVENTS],
    "three frames": [EVENTS, b"[]", b""],
    "records kind": [RECORDS, b"[]"],
    "non-JSON": [EVENTS, b"[{"],
    "invalid UTF-8": [EVENTS, b"\x80"],
    "object instead of list": [EVENTS, orjson.dumps(EVENT)],
    "list of non-objects": [EVENTS, b"[1, 2]"],
    "mixed list": [EVENTS, orjson.dumps([EVENT, "gap"])],
}


@pytest.mark.parametrize("frames", list(BAD_EVENTS.values()), ids=list(BAD_EVENTS))
def test_decode_events_rejects_a_malformed_events_message(frames):
    with pytest.raises(WireError):
        decode_events(frames)


def test_wire_error_is_a_value_error_so_generic_handlers_still_catch_it():
    assert issubclass(WireError, ValueError)


# -- fuzzing: anything a broken or hostile peer sends ends in WireError, nothing else

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=6)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=12)
                           | st.dictionaries(st.text(max_size=4), children, max_size=3), max_leaves=20)
kinds = st.sampled_from([RECORDS, EVENTS, b"", b"RR"]) | st.binary(max_size=3)
json_frames = json_values.map(orjson.dumps) | st.binary(max_size=48)
frame_lists = (st.lists(st.binary(max_size=48), max_size=5)
               | st.tuples(kinds, json_frames, st.binary(max_size=48)).map(list)
               | st.tuples(kinds, json_frames).map(list))
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(frame_lists)
def test_random_frames_raise_nothing_but_wire_error(frames):
    for decode in (decode_headers, decode_events):
        try:
            decode(frames)
        except WireError:
            pass


# nearly valid messages: rows of the right length with random field values and random sizes
@settings(FUZZ, max_examples=120)
@given(st.lists(st.tuples(st.lists(scalars, min_size=10, max_size=10), st.integers(-3, 5)), max_size=4), st.integers(0, 12))
def test_header_rows_with_random_fields_raise_nothing_but_wire_error(rows, data_size):
    message = [RECORDS, orjson.dumps([fields + [size] for fields, size in rows]), b"x" * data_size]
    try:
        decoded = decode_headers(message)
    except WireError:
        return
    assert sum(row[10] for row in decoded) == data_size
