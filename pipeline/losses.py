"""Records lost between ingest and persist, found from the numbers ingest gives them.

Ingest numbers the records of each stream on each connection (epoch) 1, 2, 3, ... A number that
skips ahead tells persist that records left ingest and never arrived: dropped at a high-water mark
by ingest or check, or still in a queue of a check or persist that was killed. Each hole becomes a
``lost`` row of the gap log: the stream, how many records, and the records either side of it (their
ids and receipt times), so that the archive says what it misses even where the feed has no ids to
show it.

The state (the last number per stream and epoch) is committed with every insert, so a restarted
persist goes on from its last commit while its write-ahead log replays the rest: a hole is reported
once, crash or not.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from pipeline.records import WireError, gap_event

EPOCHS_PER_STREAM = 4  # a stream moves to a new epoch at a reconnect; late messages of the last few still count
IDLE_EPOCH_US = 86_400 * 1_000_000  # an epoch that brought nothing for a day is forgotten
MAX_NUMBER = 1 << 62  # beyond any real stream; keeps a hostile peer's numbers inside BIGINT


class Progress(NamedTuple):
    number: int  # the highest number received
    time: int  # its record's receipt time (timestamp_collector, μs)
    id: str  # its record's exchange_sequence_id


class LossTracker:
    def __init__(self) -> None:
        self.streams: dict[tuple[str, str, str], dict[str, Progress]] = {}  # epochs in the order first seen

    def observe(self, rows: list[list]) -> list[dict]:
        """The ``lost`` rows that one message's header rows reveal; remembers how far each stream got.

        A message holds consecutive numbers of each of its streams (ingest numbers records in the
        order it batches them), so only each stream's first and last row matter. Numbers at or
        below the last one seen (a replay) are no loss."""
        spans: dict[tuple, list] = {}
        for row in rows:
            key = (row[0], row[1], row[2], row[9])
            span = spans.get(key)
            if span is None:
                spans[key] = [row, row]
            else:
                span[1] = row
        checked = []
        for key, (first, last) in spans.items():
            if not all(type(n) is int and 0 < n < MAX_NUMBER for n in (first[11], last[11])) or last[11] < first[11]:
                raise WireError(f"bad record numbers {first[11]!r}..{last[11]!r}")
            checked.append((key, first, last))
        lost = []
        for (exchange, symbol, data_type, epoch), first, last in checked:
            epochs = self.streams.setdefault((exchange, symbol, data_type), {})
            before = epochs.get(epoch)
            expected = 1 if before is None else before.number + 1
            if first[11] > expected:
                lost.append(gap_event(
                    "lost", exchange, symbol, data_type,
                    start_time=before.time if before else first[4], end_time=first[4],
                    expected=before.id if before else None, received=first[3], missing=first[11] - expected))
            if before is None or last[11] > before.number:
                epochs[epoch] = Progress(last[11], last[4], last[3])
                if len(epochs) > EPOCHS_PER_STREAM:
                    del epochs[next(iter(epochs))]
        return lost

    def forget_idle(self, now_us: int) -> None:
        """Drops epochs that brought nothing for IDLE_EPOCH_US: connections long gone."""
        for stream, epochs in list(self.streams.items()):
            for epoch, progress in list(epochs.items()):
                if now_us - progress.time > IDLE_EPOCH_US:
                    del epochs[epoch]
            if not epochs:
                del self.streams[stream]

    def rows(self) -> list[tuple]:
        """The state as rows (exchange, symbol, data_type, epoch, number, time, id)."""
        return [(*stream, epoch, *progress) for stream, epochs in self.streams.items() for epoch, progress in epochs.items()]

    def load(self, rows: Iterable[tuple]) -> None:
        for exchange, symbol, data_type, epoch, number, time, id_ in rows:
            self.streams.setdefault((exchange, symbol, data_type), {})[epoch] = Progress(number, time, id_)
