"""The stages of a whole pipeline on one machine, and where each serves its metrics.

``collector run`` renders its supervisord configuration from this list, the shipped
``supervisord.conf`` is the same rendering (a test keeps them equal), and ``collector status`` asks
these endpoints, so the three can never disagree.
"""
from __future__ import annotations

import dataclasses

from pipeline.config import DEFAULT_INGEST_ENDPOINT, DEFAULT_PERSIST_ENDPOINT


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # supervisord program name
    args: tuple[str, ...]  # after ``collector``
    metrics_port: int
    shutdown_secs: int  # the stage's own budget after SIGTERM


# Symbols recorded by default, in each exchange's own form.
DEFAULT_SYMBOLS = {
    "binance": "btcusdt,ethusdt",
    "coinbase": "BTC-USD,ETH-USD",
    "upbit": "KRW-BTC,KRW-ETH",
    "okx": "BTC-USDT,ETH-USDT",
    "bybit": "BTCUSDT,ETHUSDT",
}
EXCHANGES = tuple(DEFAULT_SYMBOLS)
SIMULATOR_PORTS = {name: 9201 + i for i, name in enumerate(EXCHANGES)}


def stages(exchanges: tuple[str, ...] = EXCHANGES) -> list[Stage]:
    ingest = [
        Stage(
            f"ingest-{name}",
            ("ingest", "--exchange", name, "--symbols", DEFAULT_SYMBOLS[name], "--feeds", "orderbook,trades",
             "--push", DEFAULT_INGEST_ENDPOINT),
            9101 + EXCHANGES.index(name),
            10,
        )
        for name in exchanges
    ]
    return ingest + [
        Stage("check", ("check", "--pull", DEFAULT_INGEST_ENDPOINT, "--push", DEFAULT_PERSIST_ENDPOINT), 9110, 10),
        Stage("persist", ("persist", "--pull", DEFAULT_PERSIST_ENDPOINT), 9111, 15),
        Stage("archive", ("archive",), 9112, 5),
    ]


def simulators(exchanges: tuple[str, ...] = EXCHANGES) -> list[Stage]:
    return [
        Stage(f"simulate-{name}", ("simulate", "--exchange", name, "--port", str(SIMULATOR_PORTS[name])), 0, 5)
        for name in exchanges
    ]


def health_endpoints(exchanges: tuple[str, ...] = EXCHANGES) -> dict[str, str]:
    return {stage.name: f"http://127.0.0.1:{stage.metrics_port}" for stage in stages(exchanges)}
