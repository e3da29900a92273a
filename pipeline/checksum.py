"""Order-book checksums that exchanges put in their frames, as pure functions.

OKX ``books``: CRC32 of the top 25 levels, bids and asks interleaved, each level as
``price:size`` exactly as sent, all joined with ``:`` (``bid1_px:bid1_sz:ask1_px:ask1_sz:...``);
when one side has fewer than 25 levels the other side's remaining levels follow alone. The
result is the unsigned CRC32 read as a signed 32-bit integer. (OKX has since deprecated the
field; frames may carry 0 or none.)
"""
from __future__ import annotations

import zlib
from typing import Sequence

OKX_DEPTH = 25


def okx_checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    """OKX's checksum of a book given best-first levels ``[price_str, size_str, ...]``."""
    parts: list[str] = []
    for i in range(OKX_DEPTH):
        if i < len(bids):
            parts.append(bids[i][0])
            parts.append(bids[i][1])
        if i < len(asks):
            parts.append(asks[i][0])
            parts.append(asks[i][1])
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= 1 << 31 else value
