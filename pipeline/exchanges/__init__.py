"""The registry of exchange adapters: adding an exchange is one module and one line here."""
from __future__ import annotations

from pipeline.exchanges import binance, bybit, coinbase, okx, upbit
from pipeline.exchanges.base import Exchange

REGISTRY: dict[str, Exchange] = {
    module.EXCHANGE.name: module.EXCHANGE
    for module in (binance, coinbase, upbit, okx, bybit)
}


def get(name: str) -> Exchange:
    return REGISTRY[name]
