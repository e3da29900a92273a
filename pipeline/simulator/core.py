"""The vocabulary an exchange module speaks: channels, frames, outcomes, and the ``Exchange`` hooks.

An exchange module subclasses ``Exchange`` and says only what differs on that exchange: its paths
and subscription messages (``route``, ``handle``), how a stream's events look (``start``,
``render``, ``on_subscribe``), its keep-alive (``server_pings``, ``idle_timeout``, ``periodic``).
It never touches a socket; ``pipeline.simulator.server`` runs everything.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Iterable, NamedTuple

import orjson

from pipeline.simulator.market import Samples

if TYPE_CHECKING:
    from pipeline.simulator.server import Conn, Stream

StreamKey = tuple[str, str]  # (symbol, channel)


@dataclasses.dataclass(frozen=True)
class Channel:
    name: str  # the stream's channel as the exchange names it
    data_type: str  # "trade" or "orderbook"
    delta: bool = False  # chained book deltas after a snapshot (--drop-book-delta-every applies)
    checksum: bool = False  # frames carry a book checksum (--corrupt-checksum-every applies)
    max_trades: int = 1  # trades per frame, at most


class Frame(NamedTuple):
    data: bytes  # the frame as sent (before a per-connection envelope)
    ids: tuple[str, ...]  # exchange_sequence_id of each record the frame carries


@dataclasses.dataclass
class Outcome:
    """What the server does about one client message."""

    replies: list[bytes] = dataclasses.field(default_factory=list)  # sent at once (pongs, errors)
    acks: list[bytes] = dataclasses.field(default_factory=list)  # subscription answers (--ack-delay)
    subscribe: list[tuple[StreamKey, object]] = dataclasses.field(default_factory=list)  # (key, label)
    unsubscribe: list[StreamKey] = dataclasses.field(default_factory=list)


class Rejected(Exception):
    """``route`` refuses the HTTP request: status and body."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


def dumps(value: object) -> bytes:
    return orjson.dumps(value)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Exchange:
    """The hooks one exchange fills in; the defaults suit an exchange with nothing special."""

    name = ""
    binary = False  # every frame is a binary WebSocket frame (Upbit)
    channels: dict[str, Channel] = {}
    depth = 100  # levels per side the true book keeps (what the exchange publishes, for delta feeds)
    min_levels = 30
    idle_timeout: float | None = None  # close connections with no traffic either way for this long
    server_pings = False  # WebSocket ping frames every --ping-interval, pong required
    periodic_secs: float | None = None  # how often ``periodic`` runs per connection

    def __init__(self, rejected: Iterable[str] = ()) -> None:
        self.rejected = {s.upper() for s in rejected}

    # symbols and starting values
    def valid_symbol(self, symbol: str) -> bool:
        return symbol.upper() not in self.rejected

    def samples(self) -> dict[str, Samples]:
        """Per symbol, what the fixtures show; empty without fixtures."""
        return {}

    def defaults(self) -> dict[str, Samples]:
        """Built-in samples for symbols the fixtures lack (and for when there are no fixtures)."""
        return {"": Samples().add(price=100, size=1).add(price="100.01", size="0.5", book=True)}

    # connections
    def route(self, path: str) -> tuple[list[tuple[StreamKey, object]], dict]:
        """The subscriptions the URL itself asks for and the connection's starting state.

        Raises ``Rejected`` for a path the exchange does not serve.
        """
        raise Rejected(404, "Not Found")

    def handle(self, conn: "Conn", message: str | bytes) -> Outcome:
        """The answer to one client message (``conn.subs`` and ``conn.state`` are the connection's)."""
        return Outcome()

    def envelope(self, conn: "Conn", stream: "Stream", data: bytes) -> bytes:
        """A stream's frame as this connection gets it (Binance wraps it on combined streams)."""
        return data

    def periodic(self, conn: "Conn") -> list[bytes]:
        """Frames sent to the connection every ``periodic_secs`` (Coinbase heartbeats)."""
        return []

    # streams
    def start(self, stream: "Stream") -> None:
        """Sets the stream's starting ids (``stream.state``) from ``stream.rng`` and the profile."""

    def render(self, stream: "Stream", update: list, corrupt: bool) -> Frame:
        """The frame of one event: ``update`` is a list of ``Trade`` or of book changes (already
        applied to ``stream.market.book``); ``corrupt`` asks for a wrong checksum."""
        raise NotImplementedError

    def on_subscribe(self, stream: "Stream", conn: "Conn", label: object) -> list[Frame]:
        """What a new subscription starts with (a book snapshot, the last trade); ``label`` is
        what ``handle`` put beside the stream key."""
        return []

    def level(self, stream: "Stream", price: int, lots: int) -> list:
        """One ``[price, size]`` of the book dump, as the exchange writes numbers."""
        market = stream.market
        return [market.profile.tick.text(price, trim=True), market.profile.lot.text(lots, trim=True)]

    def malformed(self, data: bytes) -> bytes:
        """A frame that cannot be parsed: the first half of a real one."""
        return data[: max(1, len(data) // 2)]


def iso(us: int) -> str:
    """μs since the epoch as Coinbase writes times: ``2021-04-17T16:43:37.075351Z``."""
    seconds, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def now_us() -> int:
    return time.time_ns() // 1000


def sorted_changes(changes: list, bid: bool) -> list[tuple[int, int]]:
    """One side of a book update, best price first."""
    return sorted(((p, q) for b, p, q in changes if b == bid), reverse=bid)
