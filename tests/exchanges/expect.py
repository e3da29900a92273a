"""Expectations computed in the tests, from the recorded JSON, independently of the adapters' helpers."""
from __future__ import annotations

import calendar
import datetime
import zlib

import orjson

from pipeline.exchanges.base import Parsed
from pipeline.records import DATA_TYPES, Record

INT64 = 2**63 - 1


def iso_us(text: str) -> int:
    """ISO-8601 UTC with 6 fractional digits (all recorded Coinbase Exchange times) to μs."""
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return calendar.timegm(moment.timetuple()) * 1_000_000 + moment.microsecond


def crc_id(timestamp_us: int | None, line: bytes) -> str:
    """The derived id the spec asks for: the event's time (0 when none) and the CRC-32 of its bytes."""
    return f"{timestamp_us or 0}-{zlib.crc32(line) & 0xFFFFFFFF:08x}"


def check_record(record: Record) -> None:
    """Field types every record must have, whatever frame it came from."""
    assert isinstance(record, Record)
    assert type(record.symbol) is str and record.symbol
    assert record.data_type in DATA_TYPES
    assert type(record.exchange_sequence_id) is str and record.exchange_sequence_id
    assert record.timestamp_exchange is None or (type(record.timestamp_exchange) is int and -INT64 <= record.timestamp_exchange <= INT64)
    assert type(record.data) is bytes
    orjson.loads(record.data)  # valid JSON
    for number in (record.seq, record.prev):
        assert number is None or (type(number) is int and -INT64 <= number <= INT64)
    assert type(record.snapshot) is bool


def check_parsed(parsed: Parsed) -> None:
    """Exactly one of: records, a control message, an error — each well formed."""
    assert isinstance(parsed, Parsed)
    kinds = [bool(parsed.records), parsed.control is not None, parsed.error is not None]
    assert kinds.count(True) == 1, parsed
    if parsed.records:
        for record in parsed.records:
            check_record(record)
    elif parsed.control is not None:
        assert type(parsed.control) is str and parsed.control
        assert parsed.detail is None or type(parsed.detail) is str
    else:
        assert type(parsed.error) is str and parsed.error


def only_control(parsed: Parsed, kind: str) -> None:
    assert not parsed.records and parsed.error is None, parsed
    assert parsed.control == kind, parsed
