"""The simulated market: books never cross, prices walk, the same seed gives the same market."""
from __future__ import annotations

import random

from pipeline.simulator.market import Market, Samples, Scale, profile


def market(seed: int, depth: int = 50, min_levels: int = 30) -> Market:
    samples = Samples().add(price="61837.63", size="0.02").add(price="61837.62", size="0.5", book=True)
    return Market(profile(samples), random.Random(seed), depth, min_levels)


def test_the_book_never_crosses_stays_within_depth_and_the_price_walks():
    m, rng = market(1), random.Random(2)
    m.live = True
    start = m.book.best(True)
    mids = set()
    for _ in range(3000):
        m.step(rng)
        bid, ask = m.book.best(True), m.book.best(False)
        assert bid < ask
        assert 30 <= len(m.book.bids) <= 50 and 30 <= len(m.book.asks) <= 50
        mids.add(bid + ask)
        trade = m.trade(rng)
        assert trade.price in (bid, ask) and trade.lots >= 1
    assert len(mids) > 20 and m.book.best(True) != start


def test_changes_are_what_happened_to_the_book():
    m, rng = market(3), random.Random(4)
    copy = {True: dict(m.book.bids), False: dict(m.book.asks)}
    for _ in range(500):
        for bid, price, lots in m.step(rng):
            if lots:
                copy[bid][price] = lots
            else:
                del copy[bid][price]
        assert copy == {True: m.book.bids, False: m.book.asks}


def test_same_seed_same_market():
    a, b = market(7), market(7)
    ra, rb = random.Random(8), random.Random(8)
    assert [a.step(ra) for _ in range(200)] == [b.step(rb) for _ in range(200)]


def test_scale_writes_exchange_numbers():
    tick = Scale.of(__import__("decimal").Decimal("0.01"))
    assert tick.text(6183763) == "61837.63"
    assert tick.text(6183763, 8) == "61837.63000000"
    assert tick.text(6183700, trim=True) == "61837"
    assert Scale.of(__import__("decimal").Decimal("1000")).text(32292) == "32292000"
    assert tick.number(12700) == 127.0
