"""The simulated market of one symbol: a true order book, a random walk, and number formats.

Prices and sizes are integers (ticks and lots) inside the simulator and become the exchange's
strings only when a frame is rendered, so a level has the same text in every frame (checksums
depend on that). Starting prices, tick sizes and size distributions come from the recorded
fixtures when they are there (``COLLECTOR_FIXTURES``, default ``../shared/fixtures`` beside the
repository) and from built-in samples of the same shape when they are not.
"""
from __future__ import annotations

import heapq
import math
import os
import random
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterable, NamedTuple

import orjson

REPO = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    return Path(os.environ.get("COLLECTOR_FIXTURES") or REPO.parent / "shared" / "fixtures")


def fixture_frames(relative: str) -> list:
    """The decoded frames of one fixture file; empty when the file is absent or unreadable."""
    try:
        lines = (fixtures_dir() / relative).read_bytes().splitlines()
    except OSError:
        return []
    frames = []
    for line in lines:
        try:
            frames.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return frames


class Scale(NamedTuple):
    """A step such as a tick (0.01) as an integer unit and a number of decimal places."""

    unit: int
    places: int

    @classmethod
    def of(cls, step: Decimal) -> "Scale":
        places = max(-step.normalize().as_tuple().exponent, 0)
        return cls(int(step.scaleb(places)), places)

    def text(self, steps: int, decimals: int | None = None, trim: bool = False) -> str:
        """``steps`` times the step, written with ``decimals`` places (default: the step's own)."""
        digits, places = steps * self.unit, self.places
        if decimals is not None and decimals > places:
            digits, places = digits * 10 ** (decimals - places), decimals
        if places == 0:
            return str(digits)
        text = str(digits).rjust(places + 1, "0")
        text = f"{text[:-places]}.{text[-places:]}"
        return text.rstrip("0").rstrip(".") if trim else text

    def number(self, steps: int) -> float:
        return steps * self.unit / 10**self.places

    def steps(self, value: Decimal) -> int:
        return int(value.scaleb(self.places) / self.unit)


class Samples:
    """Prices, sizes and first ids seen for one symbol in the fixtures (or made up)."""

    def __init__(self) -> None:
        self.prices: list[Decimal] = []
        self.trade_sizes: list[Decimal] = []
        self.book_sizes: list[Decimal] = []
        self.ids: dict[str, int] = {}

    def add(self, price: object = None, size: object = None, book: bool = False, **ids: object) -> "Samples":
        try:
            if price is not None:
                self.prices.append(Decimal(str(price)))
            if size is not None and Decimal(str(size)) > 0:
                (self.book_sizes if book else self.trade_sizes).append(Decimal(str(size)))
        except InvalidOperation:
            pass
        for kind, value in ids.items():
            if kind not in self.ids and value is not None:
                try:
                    self.ids[kind] = int(value)  # type: ignore[call-overload]
                except (TypeError, ValueError):
                    pass
        return self


def collect(rows: Iterable[tuple[str, dict]]) -> dict[str, Samples]:
    """``(symbol, Samples.add keywords)`` rows into one Samples per symbol, in first-seen order."""
    found: dict[str, Samples] = {}
    for symbol, fields in rows:
        found.setdefault(symbol, Samples()).add(**fields)
    return found


class Profile(NamedTuple):
    price: int  # starting price, in ticks
    tick: Scale
    lot: Scale
    trade_lots: list[int]
    book_lots: list[int]
    ids: dict[str, int]


def profile(samples: Samples) -> Profile:
    prices = sorted(set(p for p in samples.prices if p > 0))
    start = samples.prices[0] if samples.prices else Decimal(100)
    steps = [b - a for a, b in zip(prices, prices[1:]) if b > a]
    tick = min(steps) if steps else Decimal(1).scaleb(math.floor(math.log10(start)) - 5)
    sizes = samples.trade_sizes + samples.book_sizes or [Decimal(1)]
    lot_places = max(max(-s.normalize().as_tuple().exponent, 0) for s in sizes)
    tick_scale, lot_scale = Scale.of(tick), Scale.of(Decimal(1).scaleb(-lot_places))

    def lots(values: list[Decimal]) -> list[int]:
        return [max(1, lot_scale.steps(v)) for v in values]

    trade_lots = lots(samples.trade_sizes) or lots(samples.book_sizes) or [1]
    book_lots = lots(samples.book_sizes) or [x * 10 for x in trade_lots]
    return Profile(max(tick_scale.steps(start), 1), tick_scale, lot_scale, trade_lots, book_lots, dict(samples.ids))


class Trade(NamedTuple):
    price: int  # ticks
    lots: int
    buy: bool  # the taker bought


Change = tuple[bool, int, int]  # (is_bid, price ticks, lots; 0 removes the level)


class Book:
    """A price-level book: ticks -> lots per side."""

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def side(self, bid: bool) -> dict[int, int]:
        return self.bids if bid else self.asks

    def put(self, bid: bool, price: int, lots: int) -> None:
        if lots:
            self.side(bid)[price] = lots
        else:
            self.side(bid).pop(price, None)

    def apply(self, changes: Iterable[Change]) -> None:
        for bid, price, lots in changes:
            self.put(bid, price, lots)

    def best(self, bid: bool) -> int | None:
        side = self.side(bid)
        if not side:
            return None
        return max(side) if bid else min(side)

    def top(self, bid: bool, n: int | None = None) -> list[tuple[int, int]]:
        """Levels best first; all of them when ``n`` is None."""
        side = self.side(bid)
        if n is None:
            keys = sorted(side, reverse=bid)
        else:
            keys = heapq.nlargest(n, side) if bid else heapq.nsmallest(n, side)
        return [(k, side[k]) for k in keys]


class Market:
    """One symbol: its true book (kept within ``min_levels``..``depth`` per side) and last price.

    Every random draw goes through the caller's ``rng`` in an order that depends only on that
    rng and the book, so a stream seeded the same way produces the same events every run.
    """

    def __init__(self, profile: Profile, rng: random.Random, depth: int, min_levels: int) -> None:
        self.profile = profile
        self.depth = depth
        self.min_levels = min(min_levels, depth)
        self.book = Book()
        self.live = False  # a book stream has started: trades print at its touch
        self.last_price = profile.price
        self.vars: dict[str, object] = {}  # exchange-specific per-symbol counters
        spread = rng.randint(1, 3)
        best_bid = max(profile.price - spread // 2, 2)
        for bid, start in ((True, best_bid), (False, best_bid + spread)):
            price = start
            for _ in range(max(self.min_levels, depth * 3 // 4)):
                if price <= 0:
                    break
                self.book.put(bid, price, self.book_lots(rng))
                gap = 1 + int(rng.expovariate(1.5))
                price = price - gap if bid else price + gap

    def book_lots(self, rng: random.Random) -> int:
        return max(1, int(rng.choice(self.profile.book_lots) * rng.uniform(0.3, 1.7)))

    def trade_lots(self, rng: random.Random) -> int:
        return max(1, int(rng.choice(self.profile.trade_lots) * rng.uniform(0.3, 1.7)))

    def trade(self, rng: random.Random) -> Trade:
        buy = rng.random() < 0.5
        lots = self.trade_lots(rng)
        self.last_price = max(1, self.last_price + rng.choice((-1, 0, 0, 1)))
        touch = self.book.best(not buy) if self.live else None
        return Trade(touch if touch is not None else self.last_price, lots, buy)

    def _near_top(self, bid: bool, rng: random.Random) -> int:
        top = self.book.top(bid, 10)
        return top[min(int(rng.expovariate(0.5)), len(top) - 1)][0]

    def step(self, rng: random.Random) -> list[Change]:
        """One book update: a few size changes, new levels and removals near the touch.

        The touch moves when a level is inserted inside the spread or the best level goes, which
        is the random walk; the book never crosses. Returns the net change per level (never none).
        """
        while True:
            changes = self._step(rng)
            if changes:
                return changes

    def _step(self, rng: random.Random) -> list[Change]:
        book = self.book
        before: dict[tuple[bool, int], int] = {}

        def put(bid: bool, price: int, lots: int) -> None:
            before.setdefault((bid, price), book.side(bid).get(price, 0))
            book.put(bid, price, lots)

        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            bid = rng.random() < 0.5
            action = rng.random()
            offset = int(rng.expovariate(0.25))
            lots = self.book_lots(rng)
            side = book.side(bid)
            if action < 0.4 and side:
                put(bid, self._near_top(bid, rng), lots)
            elif action < 0.75:
                other = book.best(not bid)
                if other is None:
                    continue
                price = other - 1 - offset if bid else other + 1 + offset
                if price > 0:
                    put(bid, price, lots)
            elif action < 0.93 and len(side) > 1:  # the refill below brings the side back to min_levels
                put(bid, self._near_top(bid, rng), 0)
            else:  # a sweep: an aggressive order takes the best levels, the touch jumps
                for price, _ in book.top(bid, min(1 + offset // 2, len(side) - 1)):
                    put(bid, price, 0)
        for bid in (True, False):
            side = book.side(bid)
            while len(side) > self.depth:
                put(bid, min(side) if bid else max(side), 0)
            while side and len(side) < self.min_levels:
                gap = 1 + int(rng.expovariate(1.5))
                far = min(side) - gap if bid else max(side) + gap
                if far <= 0:
                    break
                put(bid, far, self.book_lots(rng))
        after = ((key, book.side(key[0]).get(key[1], 0)) for key in before)
        return [(bid, price, lots) for (bid, price), lots in after if lots != before[(bid, price)]]
