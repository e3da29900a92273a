"""LossTracker: holes in the per-stream record numbers become ``lost`` rows, once, across restarts."""
from __future__ import annotations

import pytest

from pipeline.losses import EPOCHS_PER_STREAM, IDLE_EPOCH_US, LossTracker
from pipeline.records import WireError, decode_events, encode_events

T0 = 1_700_000_000_000_000


def rows(numbers, symbol="btcusdt", epoch="7.0.1", data_type="trade"):
    """Header rows (as decode_headers gives them) whose id is 100 + number and receipt time T0 + number."""
    return [["binance", symbol, data_type, str(100 + n), T0 + n, None, None, None, False, epoch, 10, n] for n in numbers]


def test_consecutive_numbers_lose_nothing():
    tracker = LossTracker()
    assert tracker.observe(rows([1, 2, 3])) == []
    assert tracker.observe(rows([4, 5])) == []


def test_a_skipped_message_is_one_lost_row_naming_the_records_either_side():
    tracker = LossTracker()
    tracker.observe(rows([1, 2, 3]))
    [lost] = tracker.observe(rows([8, 9]))
    assert lost == {"kind": "lost", "exchange": "binance", "symbol": "btcusdt", "data_type": "trade",
                    "expected": "103", "received": "108", "missing": 4, "start_time": T0 + 3, "end_time": T0 + 8}
    assert decode_events(encode_events([lost])) == [lost]  # a row the gaps table takes


def test_each_stream_and_epoch_is_numbered_on_its_own():
    tracker = LossTracker()
    both = rows([1, 2]) + rows([1], symbol="ethusdt")
    assert tracker.observe(both) == []
    lost = tracker.observe(rows([3]) + rows([5], symbol="ethusdt"))
    assert [(r["symbol"], r["missing"]) for r in lost] == [("ethusdt", 3)]
    assert tracker.observe(rows([1, 2], epoch="7.0.2")) == [], "a new connection starts at 1"


def test_the_start_of_an_epoch_lost_is_counted_from_one():
    [lost] = LossTracker().observe(rows([6, 7], epoch="9.0.1"))
    assert (lost["missing"], lost["expected"], lost["received"]) == (5, None, "106")
    assert lost["start_time"] == lost["end_time"] == T0 + 6


def test_a_replayed_or_repeated_message_is_no_loss_and_does_not_move_back():
    tracker = LossTracker()
    tracker.observe(rows([1, 2, 3, 4]))
    assert tracker.observe(rows([2, 3])) == []
    assert tracker.observe(rows([5])) == []


def test_late_messages_of_an_earlier_epoch_still_count():
    tracker = LossTracker()
    tracker.observe(rows([1, 2], epoch="old"))
    tracker.observe(rows([1], epoch="new"))
    assert tracker.observe(rows([3], epoch="old")) == []
    assert tracker.observe(rows([2], epoch="new")) == []


def test_epochs_per_stream_are_bounded_oldest_first():
    tracker = LossTracker()
    for i in range(EPOCHS_PER_STREAM + 2):
        tracker.observe(rows([1], epoch=f"e{i}"))
    assert [r[3] for r in tracker.rows()] == [f"e{i}" for i in range(2, EPOCHS_PER_STREAM + 2)]


def test_state_survives_a_restart_through_its_rows():
    tracker = LossTracker()
    tracker.observe(rows([1, 2, 3]) + rows([1], symbol="ethusdt"))
    restarted = LossTracker()
    restarted.load(tracker.rows())
    assert restarted.rows() == tracker.rows()
    [lost] = restarted.observe(rows([10]))
    assert (lost["missing"], lost["expected"]) == (6, "103")


def test_idle_epochs_are_forgotten():
    tracker = LossTracker()
    tracker.observe(rows([1]) + rows([1], symbol="ethusdt", epoch="other"))
    tracker.observe(rows([2], symbol="ethusdt", epoch="other"))
    tracker.forget_idle(T0 + 1 + IDLE_EPOCH_US + 1)
    assert [r[1] for r in tracker.rows()] == ["ethusdt"]


@pytest.mark.parametrize("number", [0, -1, "3", None, 2.0, True, 1 << 62])
def test_numbers_that_are_not_positive_integers_refuse_the_message(number):
    tracker = LossTracker()
    bad = rows([1])
    bad[0][11] = number
    with pytest.raises(WireError):
        tracker.observe(bad)
    assert tracker.rows() == [], "a refused message leaves no trace"


def test_numbers_going_down_inside_one_message_refuse_it():
    with pytest.raises(WireError):
        LossTracker().observe(rows([5, 4]))
