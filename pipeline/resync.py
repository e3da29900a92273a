"""Book resync on a broken chain: ingest's watch over delta order books.

On a delta feed (OKX ``books``, Bybit ``orderbook.50``) one missing message makes every later book
wrong until the next snapshot. ``BookGuard`` follows each symbol's chain (``prev`` must be the last
``seq``), and on a break asks for a fresh snapshot of that symbol's book only (unsubscribe +
subscribe on the same connection), at most once per ``min_interval``. The interval from the break
to the new snapshot is reported as a ``resync`` row of the gaps table: the book is unknown there.
A resync that brings no snapshot within ``snapshot_timeout`` asks for a reconnect.

Rules, per symbol:  snapshot -> chain restarts (ends any resync)
                    prev == last seq -> ok
                    otherwise -> broken: resync now, or as soon as the interval allows
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

from pipeline import metrics
from pipeline.exchanges.base import Exchange, Semantics
from pipeline.records import Record, gap_event

CHAINED = (Semantics.CONTIGUOUS, Semantics.LINKED)


@dataclasses.dataclass
class _Chain:
    last: int | None = None
    broken_at: int | None = None  # μs receipt time of the first record after the break
    requested_at: float | None = None  # monotonic time the resync was sent
    last_request: float = float("-inf")
    reason: str = "gap"


class BookGuard:
    def __init__(self, exchange: Exchange, verify_checksum: bool, min_interval: float, snapshot_timeout: float):
        feed = exchange.feeds.get("orderbook")
        self.exchange = exchange
        self.active = bool(feed and feed.semantics in CHAINED and exchange.resubscribe_book)
        self.verify_checksum = verify_checksum and exchange.verify_book is not None
        self.min_interval, self.snapshot_timeout = min_interval, snapshot_timeout
        self._chains: dict[str, _Chain] = {}
        self._events: list[dict] = []
        self._books: dict[str, object] = {}

    def observe(self, records: Iterable[Record], received_us: int, now: float) -> Iterator[str]:
        """Follows the book records of one frame; yields messages to send to the exchange (resyncs)."""
        for record in records:
            if record.data_type != "orderbook" or record.seq is None:
                continue
            chain = self._chains.setdefault(record.symbol, _Chain())
            if record.snapshot:
                if chain.broken_at is not None:
                    self._events.append(gap_event("resync", self.exchange.name, record.symbol, "orderbook",
                                                  chain.broken_at, received_us, received=record.exchange_sequence_id))
                chain.broken_at = chain.requested_at = None
                chain.last = record.seq
                if self.verify_checksum:
                    self._books[record.symbol] = self.exchange.verify_book(None, record)[0]
                continue
            if chain.last is None:
                # joined mid-chain (e.g. the first frames after subscribing): wait for a snapshot
                chain.last = record.seq
                continue
            if record.seq <= chain.last and chain.broken_at is None and record.prev != chain.last:
                continue  # a repeat or a late frame: the checker counts it; the chain holds
            if chain.broken_at is None and record.prev != chain.last:
                chain.broken_at, chain.reason = received_us, "gap"
            chain.last = record.seq
            if chain.broken_at is None and self.verify_checksum and record.symbol in self._books:
                book, ok = self.exchange.verify_book(self._books[record.symbol], record)
                self._books[record.symbol] = book
                if not ok:
                    metrics.BOOK_CHECKSUM_FAILURES.labels(exchange=self.exchange.name, symbol=record.symbol).inc()
                    chain.broken_at, chain.reason = received_us, "checksum"
            if chain.broken_at is not None and chain.requested_at is None and now - chain.last_request >= self.min_interval:
                chain.requested_at = chain.last_request = now
                self._books.pop(record.symbol, None)
                metrics.BOOK_RESYNCS.labels(exchange=self.exchange.name, symbol=record.symbol, reason=chain.reason).inc()
                yield from self.exchange.resubscribe_book(record.symbol)

    def expired(self, now: float) -> list[str]:
        """``["reconnect"]`` when a requested snapshot is overdue."""
        for chain in self._chains.values():
            if chain.requested_at is not None and now - chain.requested_at > self.snapshot_timeout:
                chain.requested_at = None
                return ["reconnect"]
        return []

    def take_events(self) -> list[dict]:
        events, self._events = self._events, []
        return events
