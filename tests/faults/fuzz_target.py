"""atheris (libFuzzer) targets over every exchange parser and the wire decoder; run by test_fuzz.py.

    python -m tests.faults.fuzz_target parsers|wire [libFuzzer options] [corpus dir]

``parsers``: the input is one WebSocket frame given to every adapter's ``parse_safely``; nothing may
escape, the result must be well formed, and every record must survive the hops it will take: its
header encodes and decodes on the wire, and persist can turn it into an Arrow row.

``wire``: the input is a ZeroMQ message (records: header frame + data frame split at the position in
the first two bytes; events: the rest of the input). ``decode_headers``/``decode_events`` raise
nothing but ``WireError``, and what ``decode_headers`` accepts persist can turn into Arrow (or fails
with one of the errors persist catches).

libFuzzer's ``-rss_limit_mb`` bounds memory: going over it is a failure (exit status != 0).
"""
from __future__ import annotations

import sys

import atheris
import duckdb  # noqa: F401 - imported before instrumenting: only the project's own code is instrumented
import orjson  # noqa: F401
import pyarrow as pa

with atheris.instrument_imports(include=["pipeline"]):
    from pipeline.exchanges import REGISTRY
    from pipeline.records import WireError, decode_events, decode_headers, encode_records
    from pipeline.storage import batch_from_wire
    from tests.exchanges.expect import check_parsed

ADAPTERS = list(REGISTRY.values())
PERSIST_CATCHES = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError)  # stages/persist.py Buffer.add


def parsers(data: bytes) -> None:
    for adapter in ADAPTERS:
        parsed = adapter.parse_safely(data)
        check_parsed(parsed)
        if parsed.records:
            headers = [(adapter.name, r.symbol, r.data_type, r.exchange_sequence_id, 1_700_000_000_000_000,
                        r.timestamp_exchange, r.seq, r.prev, r.snapshot, "fuzz.0.1", len(r.data), n) for n, r in enumerate(parsed.records, 1)]
            frames = encode_records(headers, [r.data for r in parsed.records])
            rows = decode_headers(frames)  # what ingest sends, check and persist must accept
            batch_from_wire(rows, frames[2])  # ... and persist must be able to store


def wire(data: bytes) -> None:
    if len(data) < 2:
        return
    split = int.from_bytes(data[:2], "little") % (len(data) - 1)
    header, payload = data[2 : 2 + split], data[2 + split :]
    try:
        rows = decode_headers([b"R", header, payload])
    except WireError:
        pass
    else:
        if rows:
            try:
                batch_from_wire(rows, payload)
            except PERSIST_CATCHES:
                pass
    try:
        decode_events([b"E", data[2:]])
    except WireError:
        pass


TARGETS = {"parsers": parsers, "wire": wire}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
