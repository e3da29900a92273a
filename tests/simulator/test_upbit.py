"""Upbit: binary frames in SIMPLE format, no ack, PING -> {"status":"UP"}, sid order, idle close."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import websocket

from tests.simulator.conftest import close_code, dump_at

TICKET = {"ticket": "test"}


def recv_binary(ws) -> dict:
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY, f"opcode {opcode}: {data[:80]!r}"
    return json.loads(data.decode("utf-8"))


def test_binary_simple_frames_snapshot_first_and_unordered_unique_sids(simulate):
    sim = simulate("upbit", "--rate", "200", "--count", "120", "--seed", "4", dump_every=0.1)
    ws = sim.connect("/websocket/v1")
    ws.send(json.dumps([TICKET, {"format": "SIMPLE"}, {"type": "trade", "codes": ["KRW-BTC"], "isOnlyRealtime": True},
                        {"type": "orderbook", "codes": ["KRW-BTC"]}]))
    frames = [recv_binary(ws) for _ in range(241)]
    assert frames[0]["ty"] == "orderbook" and frames[0]["st"] == "SNAPSHOT"  # no isOnlyRealtime: a snapshot first
    books = [f for f in frames if f["ty"] == "orderbook"]
    assert all(len(b["obu"]) == 15 and b["obu"][0]["bp"] < b["obu"][0]["ap"] for b in books)
    assert all(isinstance(b["tas"], float) and isinstance(b["obu"][0]["ap"], float) for b in books)
    dump = dump_at(sim, "KRW-BTC", 120)
    assert [[u["bp"], u["bs"]] for u in books[-1]["obu"]] == dump["bids"][:15]
    assert [[u["ap"], u["as"]] for u in books[-1]["obu"]] == dump["asks"][:15]

    trades = [f for f in frames if f["ty"] == "trade"]
    assert len(trades) == 120 and all(t["st"] == "REALTIME" for t in trades)
    assert set(trades[0]) == {"ty", "cd", "tms", "td", "ttm", "ttms", "tp", "tv", "ab", "pcp", "c", "cp", "sid", "st"}
    sids = [t["sid"] for t in trades]
    assert len(set(sids)) == len(sids) and sids != sorted(sids)  # unique, not always in order
    assert sum(b < a for a, b in zip(sids, sids[1:])) < len(sids) // 5  # but increasing-ish


def test_ping_errors_rejected_codes_and_idle_close(simulate):
    sim = simulate("upbit", "--reject-symbols", "KRW-NOPE", "--idle-timeout", "0.6", "--rate", "50")
    ws = sim.connect("/websocket/v1")
    ws.send("PING")
    assert recv_binary(ws) == {"status": "UP"}
    ws.send(json.dumps([{"type": "trade", "codes": ["KRW-BTC"]}]))
    assert recv_binary(ws)["error"]["name"] == "NO_TICKET"
    ws.send(json.dumps([TICKET, {"type": "trade", "codes": ["KRW-NOPE", "KRW-ETH"], "isOnlyRealtime": True}]))
    assert recv_binary(ws) == {"error": {"name": "INVALID_PARAM", "message": "code KRW-NOPE is not supported."}}
    assert recv_binary(ws)["cd"] == "KRW-ETH"

    idle = sim.connect("/websocket/v1")
    opened = time.monotonic()
    opcode, data = idle.recv_data()
    assert opcode == websocket.ABNF.OPCODE_CLOSE and close_code(data) == 1001
    assert 0.5 < time.monotonic() - opened < 5
    assert Decimal(str(recv_binary(ws)["tp"])) > 0  # the streaming connection is not idle
