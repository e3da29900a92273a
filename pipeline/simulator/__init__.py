"""``collector simulate``: local WebSocket servers that speak each exchange's real protocol.

``core`` holds the server, streams, fault injection and manifest; ``market`` the true order book
and price model; one module per exchange says what differs (paths, subscription messages,
keep-alive, frame shapes). Adding an exchange is one module and one line here.
"""
from __future__ import annotations

import importlib
from typing import Iterable

from pipeline.simulator.core import Exchange

MODULES = {
    "binance": "pipeline.simulator.binance",
    "coinbase": "pipeline.simulator.coinbase",
    "upbit": "pipeline.simulator.upbit",
    "okx": "pipeline.simulator.okx",
    "bybit": "pipeline.simulator.bybit",
}


def create(name: str, rejected: Iterable[str] = ()) -> Exchange:
    """The simulated exchange ``name``; KeyError for one there is no module for."""
    return importlib.import_module(MODULES[name]).EXCHANGE(rejected)
