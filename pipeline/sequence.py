"""Sequence tracking per ``exchange:symbol:data_type``: ok, gap, out-of-order or duplicate.

Each feed declares what its ids promise (``Semantics``), so a gap is reported only where ids say
events were skipped:

    CONTIGUOUS  ``prev`` must be the stream's newest id; otherwise ids ``newest+1 .. prev`` are missing
    LINKED      ``prev`` must be the newest id; otherwise the chain broke (how many are missing is unknown)
    MONOTONIC   ids only increase, jumps are normal: never a gap
    UNIQUE      ids repeat only as duplicates; order means nothing
    NONE        no id to check

A record whose id was seen recently is a duplicate. An older id never seen is out of order and does
not move the stream's newest id. A gap waits ``grace`` seconds before it is reported, so a reordered
pair (1, 2, 4, 3, 5) is one out-of-order record, not a gap: a missing id that turns up late fills its
gap. The first record of a new epoch (a reconnect, a snapshot) starts the chain afresh: never a gap;
the outage itself is reported by ingest as a ``disconnect`` row.

Memory is bounded: at most ``max_streams`` streams (least recently used forgotten, their open gaps
reported first), 2 x ``RECENT`` ids and ``MAX_PENDING`` open gaps per stream.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from cachetools import LRUCache

from pipeline.exchanges.base import Semantics
from pipeline.records import gap_event

OK, DUPLICATE, OUT_OF_ORDER = "ok", "duplicate", "out_of_order"
RECENT = 1024
MAX_PENDING = 64


@dataclasses.dataclass
class _PendingGap:
    first: int  # first missing id (CONTIGUOUS) / last id before the break (LINKED)
    last: int  # last missing id (CONTIGUOUS) / the id the breaking record named as previous (LINKED)
    start_time: int
    end_time: int
    detected: float
    received: str


class _Stream:
    """One stream's state. Recent ids live in two generations of sets (between RECENT and 2 x RECENT
    ids are remembered): cheaper per record than an ordered eviction queue."""

    __slots__ = ("kind", "epoch", "newest", "newest_time", "recent", "older", "pending")

    def __init__(self, kind: Semantics) -> None:
        self.kind = kind
        self.epoch: str | None = None
        self.newest: int | None = None
        self.newest_time = 0
        self.recent: set[int] = set()
        self.older: set[int] = set()
        self.pending: list[_PendingGap] = []

    def seen(self, seq: int) -> bool:
        return seq in self.recent or seq in self.older

    def remember(self, seq: int) -> None:
        self.recent.add(seq)
        if len(self.recent) >= RECENT:
            self.older, self.recent = self.recent, set()


class _Streams(LRUCache):
    """An LRU of streams whose evictions first report the evicted stream's pending gaps."""

    def __init__(self, maxsize: int, evicted: Callable[[tuple, _Stream], None]):
        super().__init__(maxsize=maxsize)
        self._evicted = evicted

    def popitem(self):
        key, stream = super().popitem()
        self._evicted(key, stream)
        return key, stream


class SequenceTracker:
    def __init__(self, semantics: Callable[[str, str], Semantics], max_streams: int = 10_000, grace: float = 2.0):
        self._semantics = semantics
        self._streams = _Streams(max_streams, self._confirm_all)
        self._kinds: dict[tuple[str, str], Semantics] = {}
        self.grace = grace
        self._confirmed: list[dict] = []

    def _stream(self, exchange: str, symbol: str, data_type: str) -> _Stream:
        key = (exchange, symbol, data_type)
        stream = self._streams.get(key)
        if stream is None:
            kind = self._kinds.get((exchange, data_type))
            if kind is None:
                kind = self._kinds[(exchange, data_type)] = self._semantics(exchange, data_type)
            stream = self._streams[key] = _Stream(kind)
        return stream

    def observe(self, exchange: str, symbol: str, data_type: str, seq: int | None, prev: int | None,
                snapshot: bool, epoch: str, received_us: int, received_id: str, now: float) -> str:
        """The verdict on one record."""
        if seq is None:
            return OK
        stream = self._stream(exchange, symbol, data_type)
        return self._verdict((exchange, symbol, data_type), stream, seq, prev, snapshot, epoch, received_us,
                             received_id, now)

    def observe_rows(self, rows: list[list], now: float) -> list[tuple[str, tuple, int]]:
        """Verdicts on a message's header rows: (verdict, stream key, receipt time) of every record
        that is not ok. The hot path of check: the LRU is touched once per stream per message and an
        in-order record of a chained feed costs a few dictionary and set operations."""
        found = []
        streams: dict[tuple, _Stream] = {}
        verdict_of = self._verdict
        for exchange, symbol, data_type, received_id, received_us, _, seq, prev, snapshot, epoch, _, _ in rows:
            if seq is None:
                continue
            key = (exchange, symbol, data_type)
            stream = streams.get(key)
            if stream is None:
                stream = streams[key] = self._stream(exchange, symbol, data_type)
            # fast path: the next record of a chain, as nearly every record is
            if (prev is not None and prev == stream.newest and seq > prev and not snapshot and stream.epoch == epoch
                    and stream.kind is not Semantics.UNIQUE and stream.kind is not Semantics.NONE
                    and not stream.pending):
                if seq in stream.recent or seq in stream.older:
                    found.append((DUPLICATE, key, received_us))
                    continue
                stream.remember(seq)
                stream.newest, stream.newest_time = seq, received_us
                continue
            verdict = verdict_of(key, stream, seq, prev, snapshot, epoch, received_us, received_id, now)
            if verdict is not OK:
                found.append((verdict, key, received_us))
        return found

    def _verdict(self, key: tuple, stream: _Stream, seq: int, prev: int | None, snapshot: bool, epoch: str,
                 received_us: int, received_id: str, now: float) -> str:
        kind = stream.kind
        if kind is Semantics.NONE:
            return OK
        if not snapshot and stream.seen(seq):  # a snapshot may show the id of the last delta
            return DUPLICATE
        stream.remember(seq)
        if kind is Semantics.UNIQUE:
            return OK
        if stream.epoch != epoch or snapshot or stream.newest is None:
            if stream.epoch != epoch:
                self._confirm_all(key, stream)
                self._lost_with_a_process(key, stream, seq, prev, epoch, received_us, received_id)
            stream.epoch, stream.newest, stream.newest_time = epoch, seq, received_us
            return OK
        if seq <= stream.newest:
            if kind is Semantics.LINKED and prev == stream.newest:
                # the chain continues with a lower id: the exchange restarted its ids (OKX after maintenance)
                stream.newest, stream.newest_time = seq, received_us
                return OK
            self._fill(stream, seq, prev, kind)
            return OUT_OF_ORDER
        if kind is not Semantics.MONOTONIC and prev is not None and prev != stream.newest:
            if kind is Semantics.CONTIGUOUS and prev > stream.newest:
                gap = _PendingGap(stream.newest + 1, prev, stream.newest_time, received_us, now, received_id)
            else:
                gap = _PendingGap(stream.newest, prev, stream.newest_time, received_us, now, received_id)
            stream.pending.append(gap)
            if len(stream.pending) > MAX_PENDING:
                self._confirm(key, stream.pending.pop(0), kind)
        stream.newest, stream.newest_time = seq, received_us
        return OK

    def _lost_with_a_process(self, key: tuple, stream: _Stream, seq: int, prev: int | None, epoch: str,
                             received_us: int, received_id: str) -> None:
        """A stream now comes from another ingest process (``epoch`` is ``pid.connection.n``): the old
        one died without writing its outage row, so the tracker writes it, with the missing ids
        where the feed's ids are contiguous."""
        if stream.epoch is None or stream.newest is None or epoch.count(".") != 2 or stream.epoch.count(".") != 2:
            return  # not ingest's ``pid.connection.n`` form: no process to tell apart
        if stream.epoch.split(".")[0] == epoch.split(".")[0]:
            return
        missing = None
        if stream.kind is Semantics.CONTIGUOUS and prev is not None and prev > stream.newest:
            missing = prev - stream.newest
        exchange, symbol, data_type = key
        self._confirmed.append(gap_event("disconnect", exchange, symbol, data_type, stream.newest_time, received_us,
                                         expected=str(stream.newest + 1) if missing else None, received=received_id,
                                         missing=missing))

    def _fill(self, stream: _Stream, seq: int, prev: int | None, kind: Semantics) -> None:
        """A late record fills (part of) a pending gap."""
        for i, gap in enumerate(stream.pending):
            if kind is Semantics.LINKED:
                if seq == gap.last:  # a missing link arrived: the gap closes if it links back to its start
                    if prev is None or prev == gap.first:
                        del stream.pending[i]
                    else:
                        gap.last = prev
                    return
                continue
            if gap.first <= seq <= gap.last:
                if gap.first == gap.last:
                    del stream.pending[i]
                elif seq == gap.first:
                    gap.first += 1
                elif seq == gap.last:
                    gap.last -= 1
                else:
                    stream.pending.insert(i + 1, dataclasses.replace(gap, first=seq + 1))
                    gap.last = seq - 1
                return

    def confirm(self, now: float) -> list[dict]:
        """Gaps older than the grace period, as ``gaps`` rows; the caller counts and stores them."""
        for key, stream in list(self._streams.items()):
            if stream.pending and now - stream.pending[0].detected >= self.grace:
                while stream.pending and now - stream.pending[0].detected >= self.grace:
                    self._confirm(key, stream.pending.pop(0), stream.kind)
        confirmed, self._confirmed = self._confirmed, []
        return confirmed

    def confirm_all(self) -> list[dict]:
        for key, stream in list(self._streams.items()):
            self._confirm_all(key, stream)
        confirmed, self._confirmed = self._confirmed, []
        return confirmed

    def _confirm_all(self, key: tuple, stream: _Stream) -> None:
        while stream.pending:
            self._confirm(key, stream.pending.pop(0), stream.kind)

    def _confirm(self, key: tuple, gap: _PendingGap, kind: Semantics) -> None:
        exchange, symbol, data_type = key
        if kind is Semantics.CONTIGUOUS:
            expected, missing = str(gap.first), gap.last - gap.first + 1
        else:
            expected, missing = str(gap.last), None
        self._confirmed.append(gap_event("gap", exchange, symbol, data_type, gap.start_time, gap.end_time,
                                         expected=expected, received=gap.received, missing=missing))
