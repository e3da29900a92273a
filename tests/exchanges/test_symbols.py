"""Symbol normalisation: common spellings and each exchange's own form, and clear errors for the rest."""
from __future__ import annotations

import pytest

from pipeline.exchanges import REGISTRY
from pipeline.exchanges.base import SymbolError

CASES = [
    # exchange, written, normalised
    ("binance", "BTCUSDT", "btcusdt"),
    ("binance", "btcusdt", "btcusdt"),
    ("binance", "btc-usdt", "btcusdt"),
    ("binance", "BTC/USDT", "btcusdt"),
    ("binance", " ETH_BTC ", "ethbtc"),
    ("coinbase", "BTC-USD", "BTC-USD"),
    ("coinbase", "btc-usd", "BTC-USD"),
    ("coinbase", "BTC/USD", "BTC-USD"),
    ("coinbase", "BTCUSD", "BTC-USD"),
    ("coinbase", "ETHUSDT", "ETH-USDT"),
    ("coinbase", "ethbtc", "ETH-BTC"),
    ("upbit", "KRW-BTC", "KRW-BTC"),  # Upbit's own, quote-first form stays
    ("upbit", "krw-btc", "KRW-BTC"),
    ("upbit", "BTC/KRW", "KRW-BTC"),
    ("upbit", "btc-krw", "KRW-BTC"),
    ("upbit", "BTCKRW", "KRW-BTC"),
    ("upbit", "KRW-XRP", "KRW-XRP"),
    ("upbit", "XRP/KRW", "KRW-XRP"),
    ("upbit", "BTC-XTZ", "BTC-XTZ"),  # a BTC-market code from the recordings
    ("upbit", "XTZ/BTC", "BTC-XTZ"),
    ("upbit", "BTCUSDT", "USDT-BTC"),
    ("upbit", "USDT-BTC", "USDT-BTC"),
    ("upbit", "KRW-USDT", "KRW-USDT"),
    ("upbit", "USDT/KRW", "KRW-USDT"),
    ("okx", "BTC-USDT", "BTC-USDT"),
    ("okx", "btc-usdt", "BTC-USDT"),
    ("okx", "BTC/USDT", "BTC-USDT"),
    ("okx", "BTCUSDT", "BTC-USDT"),
    ("okx", "BTC-USDT-SWAP", "BTC-USDT-SWAP"),  # OKX's own derivative instIds pass as they are
    ("okx", "btc-usd-220527", "BTC-USD-220527"),
    ("bybit", "BTCUSDT", "BTCUSDT"),
    ("bybit", "btcusdt", "BTCUSDT"),
    ("bybit", "btc-usdt", "BTCUSDT"),
    ("bybit", "BTC/USDT", "BTCUSDT"),
    ("bybit", "ETH/USDC", "ETHUSDC"),
]

ERRORS = [
    (exchange, text)
    for exchange in ("binance", "coinbase", "upbit", "okx", "bybit")
    for text in ("", "   ", "BTC", "USDT", "BTC-", "-USDT", "BTC--USDT", "BTC/USDT/X", "BTC USDT", "BTC$USDT", "₿/USDT", "XYZABC")
] + [
    ("upbit", "ETH/EUR"),  # Upbit has KRW, BTC and USDT markets only
    ("upbit", "BTCUSD"),
    ("okx", "BTC-USDT-"),
    ("okx", "BTC-US DT-SWAP"),
]


@pytest.mark.parametrize("exchange, text, expected", CASES)
def test_normalise(exchange, text, expected):
    assert REGISTRY[exchange].normalize_symbol(text) == expected


@pytest.mark.parametrize("exchange, text, expected", CASES)
def test_normalising_is_idempotent(exchange, text, expected):
    normalise = REGISTRY[exchange].normalize_symbol
    assert normalise(normalise(text)) == expected


@pytest.mark.parametrize("exchange, text", ERRORS)
def test_unreadable_symbols_raise_a_clear_symbol_error(exchange, text):
    with pytest.raises(SymbolError) as info:
        REGISTRY[exchange].normalize_symbol(text)
    message = str(info.value)
    assert message and repr(text) in message or "market" in message


def test_every_registered_exchange_is_covered():
    assert {case[0] for case in CASES} == set(REGISTRY)
