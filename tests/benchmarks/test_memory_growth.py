"""benchmarks: the least-squares slope of RSS samples, its standard error, and when memory counts as not growing."""
from __future__ import annotations

import pytest

from benchmarks.common import slope_and_error
from benchmarks.run import no_growth


def test_a_straight_line_has_its_slope_and_no_error():
    assert slope_and_error([(t, 100 + 2 * t) for t in range(30)]) == pytest.approx((2.0, 0.0))


def test_a_saw_tooth_around_a_level_has_a_slope_its_error_covers():
    samples = [(t, 300 + (80 if t % 3 == 0 else -40)) for t in range(30)]
    slope, error = slope_and_error(samples)
    assert abs(slope) <= 2 * error and error > 0


def test_growth_beyond_the_scatter_is_growth():
    samples = [(t, 300 + 5 * t + (10 if t % 2 else -10)) for t in range(30)]
    slope, error = slope_and_error(samples)
    assert not no_growth(slope * 30, 2 * error * 30)


@pytest.mark.parametrize("growth, noise, steady", [
    (0.4, None, True), (-0.9, 0.0, True), (40.0, 60.0, True), (-40.0, 60.0, True),
    (40.0, 10.0, False), (2.0, None, False), (None, None, False),
])
def test_no_growth_is_under_the_target_or_within_the_noise(growth, noise, steady):
    assert no_growth(growth, noise) is steady


def test_fewer_than_two_points_have_no_slope():
    assert slope_and_error([(0, 1)]) is None and slope_and_error([(1, 1), (1, 2)]) is None
