"""pipeline/sequence.py: the SequenceTracker state machine, driven with explicit ``now`` values, for
each ``Semantics``; its memory bounds; and real recorded Binance trades."""
from __future__ import annotations

import pytest

from pipeline import exchanges
from pipeline.exchanges.base import Semantics
from pipeline.sequence import DUPLICATE, MAX_PENDING, OK, OUT_OF_ORDER, RECENT, SequenceTracker
from tests.conftest import fixture_lines

GRACE = 2.0
T0 = 1_723_200_000_000_000


class Feed:
    """One stream of a tracker: ``feed(seq)`` observes a record, with ``prev`` = seq - 1 unless given
    (what the adapters of contiguous feeds send), receipt time T0 + seq μs, and the clock ``now``."""

    def __init__(self, semantics: Semantics, tracker: SequenceTracker | None = None, symbol: str = "btcusdt",
                 max_streams: int = 10_000):
        self.semantics = semantics
        self.tracker = tracker or SequenceTracker(lambda exchange, data_type: semantics, max_streams, GRACE)
        self.symbol = symbol
        self.now = 100.0

    def feed(self, seq, prev="auto", *, snapshot=False, epoch="e1", received_us=None, now=None) -> str:
        if prev == "auto":
            prev = None if seq is None else seq - 1
        if now is not None:
            self.now = now
        received = T0 + (seq or 0) if received_us is None else received_us
        return self.tracker.observe("x", self.symbol, "trade", seq, prev, snapshot, epoch, received, str(seq), self.now)

    def run(self, *seqs, **kwargs) -> list[str]:
        return [self.feed(seq, **kwargs) for seq in seqs]

    def gaps(self, after: float = GRACE) -> list[dict]:
        """Gaps confirmed once the grace period after the last observation has passed."""
        return self.tracker.confirm(self.now + after)


def contiguous(**kwargs) -> Feed:
    return Feed(Semantics.CONTIGUOUS, **kwargs)


# -- CONTIGUOUS

def test_contiguous_in_order_is_ok_and_never_a_gap():
    s = contiguous()
    assert s.run(*range(1, 21)) == [OK] * 20
    assert s.gaps(after=1e6) == []


def test_contiguous_skipped_id_is_one_gap_with_what_was_expected_and_when():
    s = contiguous()
    assert s.run(1, 2, 3, 5, 6) == [OK] * 5
    [gap] = s.gaps()
    assert gap == {
        "kind": "gap", "exchange": "x", "symbol": "btcusdt", "data_type": "trade",
        "expected": "4", "received": "5", "missing": 1,
        "start_time": T0 + 3,  # the last record before the hole
        "end_time": T0 + 5,  # the record after it
    }


@pytest.mark.parametrize("seqs, expected, missing", [
    ((1, 5), "2", 3),
    ((10, 11, 1000), "12", 988),
    ((1, 3, 4), "2", 1),
])
def test_contiguous_gap_counts_every_missing_id(seqs, expected, missing):
    s = contiguous()
    s.run(*seqs)
    assert [(g["expected"], g["missing"]) for g in s.gaps()] == [(expected, missing)]


def test_a_gap_waits_the_grace_period_and_is_reported_once():
    s = contiguous()
    s.feed(1, now=10.0)
    s.feed(3, now=10.0)  # detected at 10.0
    assert s.tracker.confirm(10.0) == []
    assert s.tracker.confirm(10.0 + GRACE - 0.001) == []
    assert len(s.tracker.confirm(10.0 + GRACE)) == 1
    assert s.tracker.confirm(10.0 + 100 * GRACE) == []


def test_confirm_all_reports_pending_gaps_without_waiting():
    s = contiguous()
    s.run(1, 3)
    assert [g["expected"] for g in s.tracker.confirm_all()] == ["2"]
    assert s.gaps(after=1e6) == []


@pytest.mark.parametrize("seqs, verdicts", [
    ((1, 2, 2), [OK, OK, DUPLICATE]),
    ((1, 2, 3, 2), [OK, OK, OK, DUPLICATE]),
    ((1, 1, 1), [OK, DUPLICATE, DUPLICATE]),
])
def test_contiguous_repeat_is_a_duplicate_and_not_a_gap(seqs, verdicts):
    s = contiguous()
    assert s.run(*seqs) == verdicts
    assert s.gaps(after=1e6) == []


def test_adjacent_swap_is_one_out_of_order_and_zero_gaps():
    s = contiguous()
    assert s.run(1, 2, 4, 3, 5) == [OK, OK, OK, OUT_OF_ORDER, OK]
    assert s.gaps(after=1e6) == []


def test_out_of_order_does_not_move_the_newest_id():
    s = contiguous()
    assert s.run(10, 11, 5, 12) == [OK, OK, OUT_OF_ORDER, OK]  # 12 continues 11: no gap from 5
    assert s.gaps(after=1e6) == []


@pytest.mark.parametrize("late, remaining", [
    (3, [("2", 1), ("4", 1)]),  # the middle: the hole splits in two
    (2, [("3", 2)]),  # the first missing id
    (4, [("2", 2)]),  # the last missing id
])
def test_a_late_id_fills_its_part_of_a_multi_id_gap(late, remaining):
    s = contiguous()
    assert s.run(1, 5, late) == [OK, OK, OUT_OF_ORDER]
    assert sorted((g["expected"], g["missing"]) for g in s.gaps()) == remaining


def test_every_missing_id_arriving_late_leaves_no_gap():
    s = contiguous()
    assert s.run(1, 5, 3, 2, 4, 6) == [OK, OK, OUT_OF_ORDER, OUT_OF_ORDER, OUT_OF_ORDER, OK]
    assert s.gaps(after=1e6) == []


def test_a_new_epoch_is_never_a_gap():
    s = contiguous()
    assert s.run(1, 2, 3, epoch="e1") == [OK] * 3
    assert s.run(500, 501, epoch="e2") == [OK, OK]
    assert s.gaps(after=1e6) == []


def test_a_new_epoch_reports_the_old_epochs_pending_gaps_at_once():
    s = contiguous()
    s.feed(1, epoch="e1", now=50.0)
    s.feed(3, epoch="e1", now=50.0)  # gap of 2, still in its grace period
    s.feed(900, epoch="e2", now=50.5)
    assert [g["expected"] for g in s.tracker.confirm(50.5)] == ["2"]  # before the grace period ended
    assert s.tracker.confirm(1e6) == []


def test_a_repeat_after_a_reconnect_is_a_duplicate_then_the_new_epoch_starts_afresh():
    s = contiguous()
    s.run(1, 2, 3, epoch="e1")
    assert s.run(3, 7, 8, epoch="e2") == [DUPLICATE, OK, OK]
    assert s.gaps(after=1e6) == []


def test_a_snapshot_restarts_the_chain_without_a_gap():
    s = contiguous()
    assert s.run(1, 2) == [OK, OK]
    assert s.feed(1000, prev=-1, snapshot=True) == OK
    assert s.feed(1001) == OK
    assert s.feed(3, prev=2, snapshot=True) == OK  # even to a lower id (Bybit's u goes back after a restart)
    assert s.feed(4) == OK
    assert s.gaps(after=1e6) == []


def test_records_without_prev_never_make_a_contiguous_gap():
    s = contiguous()
    assert s.run(1, 5, 9, prev=None) == [OK] * 3
    assert s.gaps(after=1e6) == []


# -- LINKED

def linked() -> Feed:
    return Feed(Semantics.LINKED)


def test_linked_chain_with_jumping_ids_is_ok():
    s = linked()
    assert [s.feed(10, prev=None), s.feed(20, prev=10), s.feed(35, prev=20), s.feed(36, prev=35)] == [OK] * 4
    assert s.gaps(after=1e6) == []


def test_linked_broken_chain_is_one_gap_without_a_count():
    s = linked()
    s.feed(10, prev=None)
    s.feed(20, prev=10)
    assert s.feed(40, prev=30) == OK
    [gap] = s.gaps()
    assert (gap["expected"], gap["received"], gap["missing"]) == ("30", "40", None)
    assert (gap["start_time"], gap["end_time"]) == (T0 + 20, T0 + 40)


def test_linked_missing_link_arriving_late_closes_the_gap():
    s = linked()
    s.feed(10, prev=None)
    s.feed(30, prev=20)
    assert s.feed(20, prev=10) == OUT_OF_ORDER
    assert s.gaps(after=1e6) == []


def test_linked_late_record_that_is_itself_broken_keeps_the_gap():
    s = linked()
    s.feed(10, prev=None)
    s.feed(40, prev=30)  # 20 and 30 missing
    assert s.feed(30, prev=20) == OUT_OF_ORDER  # 30 arrives; 20 still missing
    assert [g["expected"] for g in s.gaps()] == ["20"]


def test_linked_snapshot_restarts_the_chain():
    s = linked()
    s.feed(10, prev=None)
    assert s.feed(500, prev=-1, snapshot=True) == OK
    assert s.feed(510, prev=500) == OK
    assert s.gaps(after=1e6) == []


def test_linked_repeat_is_a_duplicate():
    s = linked()
    s.feed(10, prev=None)
    s.feed(20, prev=10)
    assert s.feed(20, prev=10) == DUPLICATE


# -- MONOTONIC

def test_monotonic_jumps_are_never_gaps_and_lower_ids_are_out_of_order():
    s = Feed(Semantics.MONOTONIC)
    assert s.run(1, 100, 5000, 5001, prev=None) == [OK] * 4
    assert s.feed(50, prev=None) == OUT_OF_ORDER
    assert s.feed(4000, prev=None) == OUT_OF_ORDER  # the newest id did not move down to 50
    assert s.feed(5000, prev=None) == DUPLICATE
    assert s.gaps(after=1e6) == []


def test_monotonic_ignores_prev_even_when_it_names_another_id():
    s = Feed(Semantics.MONOTONIC)
    assert s.run(10, 20, 30) == [OK] * 3  # prev 19 != 10, prev 29 != 20
    assert s.gaps(after=1e6) == []


# -- UNIQUE

def test_unique_unordered_ids_are_never_gaps_nor_out_of_order_and_repeats_are_duplicates():
    s = Feed(Semantics.UNIQUE)
    assert s.run(500, 3, 90_000, 1, 2, prev=None) == [OK] * 5
    assert s.run(3, 500, prev=None) == [DUPLICATE, DUPLICATE]
    assert s.run(7, 8, prev=None, epoch="e2") == [OK, OK]
    assert s.gaps(after=1e6) == []


# -- NONE, and records without a seq

def test_semantics_none_is_always_ok():
    s = Feed(Semantics.NONE)
    assert s.run(5, 5, 1, 99, 1) == [OK] * 5
    assert s.gaps(after=1e6) == []


@pytest.mark.parametrize("semantics", list(Semantics))
def test_a_record_without_seq_is_always_ok_and_leaves_the_stream_alone(semantics):
    s = Feed(semantics)
    assert s.run(None, None, None) == [OK] * 3
    if semantics is Semantics.CONTIGUOUS:
        assert s.run(1, 2, None, 3) == [OK] * 4
        assert s.gaps(after=1e6) == []


def test_streams_are_separate_per_exchange_symbol_and_data_type():
    tracker = SequenceTracker(lambda exchange, data_type: Semantics.CONTIGUOUS, grace=GRACE)
    for exchange, symbol, data_type in [("a", "s", "trade"), ("b", "s", "trade"), ("a", "t", "trade"), ("a", "s", "orderbook")]:
        assert tracker.observe(exchange, symbol, data_type, 1, 0, False, "e", T0, "1", 0.0) == OK
        assert tracker.observe(exchange, symbol, data_type, 2, 1, False, "e", T0, "2", 0.0) == OK
    assert tracker.confirm(1e6) == []


def test_semantics_are_asked_once_per_exchange_and_data_type():
    asked = []

    def semantics(exchange, data_type):
        asked.append((exchange, data_type))
        return Semantics.CONTIGUOUS

    tracker = SequenceTracker(semantics)
    for symbol in ("a", "b", "c"):
        for seq in (1, 2):
            tracker.observe("x", symbol, "trade", seq, seq - 1, False, "e", T0, str(seq), 0.0)
    assert asked == [("x", "trade")]


# -- memory bounds

def test_least_recently_used_streams_are_forgotten_beyond_max_streams():
    tracker = SequenceTracker(lambda exchange, data_type: Semantics.CONTIGUOUS, max_streams=2, grace=GRACE)
    a, b, c = (Feed(Semantics.CONTIGUOUS, tracker, symbol) for symbol in "abc")
    a.run(1, 2)
    b.run(1, 2)
    a.feed(3)  # a is now the most recently used
    c.run(1, 2)  # evicts b
    assert b.feed(10) == OK  # b starts afresh: no gap from 2 to 10
    assert b.feed(2) == OUT_OF_ORDER  # and its old ids are forgotten: not a duplicate
    assert tracker.confirm(1e6) == []


def test_a_stream_kept_by_use_still_finds_gaps_with_max_streams_two():
    tracker = SequenceTracker(lambda exchange, data_type: Semantics.CONTIGUOUS, max_streams=2, grace=GRACE)
    a, b, c = (Feed(Semantics.CONTIGUOUS, tracker, symbol) for symbol in "abc")
    a.run(1, 2)
    b.run(1, 2)
    a.feed(3)
    c.run(1, 2)  # evicts b, not a
    a.feed(5)
    assert [(g["symbol"], g["expected"]) for g in tracker.confirm(1e6)] == [("a", "4")]


def test_a_detected_gap_is_reported_even_if_its_stream_is_evicted():
    tracker = SequenceTracker(lambda exchange, data_type: Semantics.CONTIGUOUS, max_streams=2, grace=GRACE)
    a, b, c = (Feed(Semantics.CONTIGUOUS, tracker, symbol) for symbol in "abc")
    a.run(1, 3)  # gap: 2, pending
    b.run(1)
    c.run(1)  # evicts a
    assert [(g["symbol"], g["expected"]) for g in tracker.confirm(1e6)] == [("a", "2")]


def test_pending_gaps_are_bounded_and_the_oldest_is_reported_early_not_lost():
    s = contiguous()
    seqs = list(range(1, 2 * (MAX_PENDING + 1) + 2, 2))  # 1, 3, 5, ...: MAX_PENDING + 1 gaps
    s.run(*seqs, now=10.0)
    early = s.tracker.confirm(10.0)  # before any grace period ended
    assert [g["expected"] for g in early] == ["2"]
    late = s.tracker.confirm(10.0 + GRACE)
    assert len(late) == MAX_PENDING
    assert [g["expected"] for g in early + late] == [str(n + 1) for n in seqs[:-1]]


def test_recent_ids_are_bounded_an_id_older_than_that_is_out_of_order_not_a_duplicate():
    s = contiguous()
    last = 2 * RECENT + 100  # two generations of RECENT ids are remembered
    assert set(s.run(*range(1, last + 1))) == {OK}
    assert s.feed(1) == OUT_OF_ORDER  # forgotten
    assert s.feed(last - 5) == DUPLICATE  # remembered
    assert s.gaps(after=1e6) == []


# -- real recorded Binance trades (contiguous trade ids per symbol)

def _observe_frames(lines: list[bytes]) -> tuple[list[str], list[dict], dict[str, list[int]]]:
    adapter = exchanges.get("binance")
    kinds = {feed.data_type: feed.semantics for feed in adapter.feeds.values()}
    tracker = SequenceTracker(lambda exchange, data_type: kinds[data_type], grace=GRACE)
    verdicts, ids = [], {}
    for n, line in enumerate(lines):
        for r in adapter.parse(line).records:
            ids.setdefault(r.symbol, []).append(r.seq)
            verdicts.append(tracker.observe("binance", r.symbol, r.data_type, r.seq, r.prev, r.snapshot, "e1",
                                            T0 + n, r.exchange_sequence_id, 1.0 + n / 1000))
    return verdicts, tracker.confirm(1e6), ids


def test_recorded_binance_trades_have_no_gap():
    verdicts, gaps, ids = _observe_frames(fixture_lines("binance/trade.jsonl"))
    assert len(verdicts) == 500 and set(verdicts) == {OK}
    assert gaps == []
    assert len(ids) == 2  # both symbols were checked


def test_recorded_binance_trades_with_every_50th_frame_removed_have_exactly_those_gaps():
    lines = fixture_lines("binance/trade.jsonl")
    adapter = exchanges.get("binance")
    removed = [adapter.parse(line).records[0] for line in lines[49::50]]
    kept = [line for n, line in enumerate(lines) if n % 50 != 49]
    verdicts, gaps, ids = _observe_frames(kept)
    # a removed trade is a detectable gap when a later trade of its symbol was kept
    detectable = {r.exchange_sequence_id for r in removed if any(seq > r.seq for seq in ids[r.symbol])}
    assert len(removed) == 10 and len(detectable) >= 8  # the fixture's last frame of a symbol has no successor
    assert set(verdicts) == {OK}
    assert sorted(g["expected"] for g in gaps) == sorted(detectable)
    assert all(g["missing"] == 1 and g["received"] == str(int(g["expected"]) + 1) for g in gaps)
    assert {g["symbol"] for g in gaps} <= set(ids)
