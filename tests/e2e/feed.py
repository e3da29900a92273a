"""Records pushed straight into a stage's PULL socket over real ZeroMQ, as check would send them."""
from __future__ import annotations

import time

import orjson
import zmq

from pipeline.records import encode_events, encode_records, gap_event


def trade_records(symbols: list[str], per_symbol: int, first_id: int = 1) -> list[tuple[tuple, bytes]]:
    """(header, data) pairs of Binance-format trades, contiguous ids per symbol, numbered 1, 2, ... per
    symbol (``Feeder`` numbers what it sends afresh, as ingest does)."""
    now = time.time_ns() // 1000
    records = []
    for n in range(per_symbol):
        for symbol in symbols:
            trade_id = first_id + n
            event_ms = now // 1000 - 50
            data = orjson.dumps({"stream": f"{symbol}@trade", "data": {
                "e": "trade", "E": event_ms, "s": symbol.upper(), "t": trade_id, "p": f"{60000 + n}.5",
                "q": "0.01", "T": event_ms, "m": bool(n % 2), "M": True}})
            header = ("binance", symbol, "trade", str(trade_id), now + n, event_ms * 1000, trade_id, trade_id - 1,
                      False, "test.1", len(data), n + 1)
            records.append((header, data))
    return records


def sample_gaps(symbols: list[str]) -> list[dict]:
    now = time.time_ns() // 1000
    return [gap_event("gap", "binance", s, "trade", now - 2_000_000, now - 1_000_000, expected="5", received="9",
                      missing=4) for s in symbols]


class Feeder:
    def __init__(self, endpoint: str):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 5000)
        self.socket.connect(endpoint)
        self.numbers: dict[tuple, int] = {}

    def send(self, records: list[tuple[tuple, bytes]], batch: int = 100) -> None:
        """Pushes the records as ingest would, numbering each stream's records in the order sent: records
        left out here are what the exchange never sent, not a loss in the pipeline."""
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            self.socket.send_multipart(encode_records([self._numbered(h) for h, _ in chunk], [d for _, d in chunk]))

    def _numbered(self, header: tuple) -> tuple:
        stream = (header[1], header[2], header[9])
        number = self.numbers[stream] = self.numbers.get(stream, 0) + 1
        return (*header[:11], number)

    def send_events(self, events: list[dict]) -> None:
        self.socket.send_multipart(encode_events(events))

    def close(self) -> None:
        self.socket.close()
        self.context.term()
