"""Pure policies of a connection that lives for months: reconnect backoff and the parse-error breaker."""
from __future__ import annotations

import collections
import random


class Backoff:
    """Exponential reconnect delays, ``initial`` doubling to ``maximum``, each with ±25 % jitter.

    ``reset`` after a connection that delivered data, so one bad hour does not slow the next outage.
    """

    JITTER = 0.25

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None):
        self.initial, self.maximum = initial, maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return base * self._rng.uniform(1 - self.JITTER, 1 + self.JITTER)

    def reset(self) -> None:
        self.attempt = 0


class ParseBreaker:
    """Trips when at least ``threshold`` of the frames of the last ``window`` seconds failed to parse,
    once there are ``min_samples`` of them: an API change turned the stream into garbage, so
    reconnecting (and alerting) beats silently counting errors for hours.
    """

    def __init__(self, window: float = 60.0, threshold: float = 0.5, min_samples: int = 100):
        self.window, self.threshold, self.min_samples = window, threshold, min_samples
        self._buckets: collections.deque[list] = collections.deque()  # [second, total, errors]
        self._total = self._errors = 0

    def record(self, ok: bool, now: float) -> bool:
        """Counts one frame; True when the breaker trips (and then starts afresh)."""
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
            horizon = second - self.window
            while self._buckets and self._buckets[0][0] <= horizon:
                _, total, errors = self._buckets.popleft()
                self._total -= total
                self._errors -= errors
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._total += 1
        if not ok:
            bucket[2] += 1
            self._errors += 1
            if self._total >= self.min_samples and self._errors >= self.threshold * self._total:
                self.reset()
                return True
        return False

    def reset(self) -> None:
        self._buckets.clear()
        self._total = self._errors = 0
