"""The registry of exchange adapters: adding an exchange is one module and one line here."""
from __future__ import annotations

from pipeline.exchanges import binance
from pipeline.exchanges.base import Exchange

REGISTRY: dict[str, Exchange] = {
    module.EXCHANGE.name: module.EXCHANGE
    for module in (binance,)
}


def get(name: str) -> Exchange:
    return REGISTRY[name]
