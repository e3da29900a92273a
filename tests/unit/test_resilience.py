"""pipeline/resilience.py: reconnect backoff and the parse-error circuit breaker, with explicit time."""
from __future__ import annotations

import random

import pytest

from pipeline.resilience import Backoff, ParseBreaker


class _Midpoint(random.Random):
    """uniform() returns the middle of its range: the delay without jitter."""

    def uniform(self, a, b):
        return (a + b) / 2


@pytest.mark.parametrize("initial, maximum, expected", [
    (1, 60, [1, 2, 4, 8, 16, 32, 60, 60, 60]),  # the SPEC's 1 s -> 60 s
    (0.5, 3, [0.5, 1, 2, 3, 3]),
    (5, 5, [5, 5, 5]),
])
def test_backoff_doubles_from_initial_to_max(initial, maximum, expected):
    backoff = Backoff(initial, maximum, _Midpoint())
    assert [backoff.next_delay() for _ in expected] == pytest.approx(expected)


def test_backoff_reset_starts_again_from_initial():
    backoff = Backoff(1, 60, _Midpoint())
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert [backoff.next_delay() for _ in range(3)] == pytest.approx([1, 2, 4])


def test_backoff_stays_at_max_after_very_many_attempts():
    backoff = Backoff(1, 60, _Midpoint())
    for _ in range(10_000):
        delay = backoff.next_delay()
    assert delay == pytest.approx(60)


@pytest.mark.parametrize("seed", range(5))
def test_backoff_jitter_is_within_25_percent_and_actually_varies(seed):
    bases = [1, 2, 4, 8, 16, 32] + [60] * 200
    backoff = Backoff(1, 60, random.Random(seed))
    delays = [backoff.next_delay() for _ in bases]
    ratios = [delay / base for delay, base in zip(delays, bases)]
    assert all(0.75 <= r <= 1.25 for r in ratios)
    assert min(ratios) < 0.85 and max(ratios) > 1.15  # spread over the band, not a constant factor
    assert len(set(round(r, 6) for r in ratios)) > 100


def test_backoff_with_the_same_seed_repeats_its_delays():
    first = Backoff(1, 60, random.Random(7))
    second = Backoff(1, 60, random.Random(7))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


# -- ParseBreaker: 60 s window, trips at >= 50 % errors with >= 100 samples

def feed(breaker: ParseBreaker, oks: int, errors: int, now: float) -> list[bool]:
    """``oks`` good frames then ``errors`` bad ones, all at ``now``; what record() said for each."""
    return [breaker.record(True, now) for _ in range(oks)] + [breaker.record(False, now) for _ in range(errors)]


def test_breaker_does_not_trip_below_100_samples_even_if_all_fail():
    breaker = ParseBreaker()
    assert not any(feed(breaker, 0, 99, 10.0))


def test_breaker_trips_on_the_100th_sample_when_all_fail():
    breaker = ParseBreaker()
    assert feed(breaker, 0, 100, 10.0) == [False] * 99 + [True]


@pytest.mark.parametrize("oks, errors, trips", [
    (50, 50, True),  # exactly 50 % of 100
    (51, 49, False),  # 49 %
    (100, 100, True),
    (101, 99, False),
])
def test_breaker_threshold_is_half_of_the_samples(oks, errors, trips):
    breaker = ParseBreaker()
    assert any(feed(breaker, oks, errors, 10.0)) is trips


def test_breaker_good_frames_never_trip_it():
    breaker = ParseBreaker()
    assert not any(feed(breaker, 1000, 0, 10.0))


def test_breaker_samples_older_than_the_window_slide_out():
    breaker = ParseBreaker()
    assert not any(feed(breaker, 0, 99, now=0.0))  # 99 errors at t=0
    # 60 s later those errors are out of the window: 1 more error is 1 sample, not 100
    assert not any(feed(breaker, 0, 1, now=60.0))
    assert not any(feed(breaker, 0, 98, now=61.0))
    assert feed(breaker, 0, 1, now=62.0) == [True]  # 100 errors inside the window (t = 60..62)


def test_breaker_samples_inside_the_window_count_together():
    breaker = ParseBreaker()
    assert not any(feed(breaker, 0, 60, now=0.0))
    assert feed(breaker, 0, 40, now=59.9)[-1] is True  # still within 60 s of the first ones


def test_breaker_good_frames_slide_out_too():
    breaker = ParseBreaker()
    feed(breaker, 1000, 0, now=0.0)  # a good minute
    assert not any(feed(breaker, 0, 100, now=30.0))  # 100 of 1100 failed: 9 %
    assert any(feed(breaker, 0, 1, now=61.0))  # the good ones left the window: 101 of 101


def test_breaker_resets_after_tripping():
    breaker = ParseBreaker()
    assert feed(breaker, 0, 100, 10.0)[-1] is True
    assert not any(feed(breaker, 0, 99, 10.5))  # it starts afresh: 99 samples are below the minimum
    assert feed(breaker, 0, 1, 10.5) == [True]


def test_breaker_explicit_reset_forgets_everything():
    breaker = ParseBreaker()
    feed(breaker, 0, 99, 10.0)
    breaker.reset()
    assert not any(feed(breaker, 0, 99, 10.0))
