"""Bybit spot: acks, pong, refusals, contiguous book ``u``, batched trades, snapshots, ack delay."""
from __future__ import annotations

import json
import time
from decimal import Decimal

from tests.conftest import wait_for
from tests.simulator.conftest import TextBook, dump_at, recv_json, recv_until


def request(ws, op, args=None, **extra):
    ws.send(json.dumps({"op": op, **({"args": args} if args is not None else {}), **extra}))


def test_subscribe_ping_and_refusals(simulate):
    sim = simulate("bybit", "--rate", "100", "--reject-symbols", "NOPEUSDT")
    ws = sim.connect("/v5/public/spot")
    request(ws, "subscribe", ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"])
    ack = recv_json(ws)
    assert ack == {"success": True, "ret_msg": "subscribe", "conn_id": ack["conn_id"], "op": "subscribe"}
    request(ws, "ping", req_id="p1")
    frames = recv_until(ws, lambda f: f and f[-1].get("op") == "ping")
    assert frames[-1] == {"success": True, "ret_msg": "pong", "conn_id": ack["conn_id"], "req_id": "p1", "op": "ping"}
    request(ws, "subscribe", ["publicTrade.NOPEUSDT"])
    refused = recv_until(ws, lambda f: f and f[-1].get("op") == "subscribe")[-1]
    assert refused["success"] is False and refused["ret_msg"] == "Invalid symbol :[publicTrade.NOPEUSDT]"
    request(ws, "subscribe", [f"publicTrade.S{i}USDT" for i in range(11)])
    refused = recv_until(ws, lambda f: f and f[-1].get("op") == "subscribe")[-1]
    assert refused["success"] is False


def test_book_deltas_are_contiguous_and_trades_come_in_batches(simulate):
    sim = simulate("bybit", "--rate", "200", "--seed", "2", "--count", "80", dump_every=0.1)
    ws = sim.connect("/v5/public/spot")
    request(ws, "subscribe", ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"], req_id="r")
    frames = recv_until(ws, lambda f: sum(x.get("type") == "delta" for x in f) == 80
                        and sum(x.get("topic", "").startswith("publicTrade") for x in f) == 80)
    books = [f for f in frames if f.get("topic") == "orderbook.50.BTCUSDT"]
    assert books[0]["type"] == "snapshot" and len(books[0]["data"]["b"]) == 50
    book = TextBook()
    for i, frame in enumerate(books):
        data = frame["data"]
        if i:
            assert frame["type"] == "delta" and data["u"] == books[i - 1]["data"]["u"] + 1
            assert data["seq"] > books[i - 1]["data"]["seq"] and frame["cts"] <= frame["ts"]
        for bid, key in ((True, "b"), (False, "a")):
            for price, size in data[key]:
                book.set(bid, price, size)
        assert not book.crossed()
    dump = dump_at(sim, "BTCUSDT", 80)
    assert dump["seq"] == str(books[-1]["data"]["u"])
    assert dump["bids"] == book.top(True) and dump["asks"] == book.top(False)
    trades = [t for f in frames if f.get("topic") == "publicTrade.BTCUSDT" for t in f["data"]]
    assert max(len(f["data"]) for f in frames if f.get("topic") == "publicTrade.BTCUSDT") > 1
    ids = [int(t["i"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert all(set(t) == {"i", "T", "p", "v", "S", "seq", "s", "BT", "RPI"} and Decimal(t["v"]) > 0 for t in trades)
    sent = wait_for(lambda: (s := [m for m in sim.manifest() if m["data_type"] == "trade"]) and len(s) >= len(trades) and s,
                    10, what="the trades' manifest lines")
    assert [m["exchange_sequence_id"] for m in sent] == [t["i"] for t in trades]


def test_resubscribe_sends_a_new_snapshot(simulate):
    sim = simulate("bybit", "--rate", "100")
    ws = sim.connect("/v5/public/spot")
    request(ws, "subscribe", ["orderbook.50.ETHUSDT"])
    first = recv_until(ws, lambda f: sum(x.get("type") == "delta" for x in f) >= 3)
    request(ws, "unsubscribe", ["orderbook.50.ETHUSDT"])
    recv_until(ws, lambda f: f and f[-1].get("op") == "unsubscribe")
    request(ws, "subscribe", ["orderbook.50.ETHUSDT"])
    again = recv_until(ws, lambda f: f and f[-1].get("topic"))
    assert again[-1]["type"] == "snapshot" and again[-1]["data"]["u"] >= first[-1]["data"]["u"]


def test_ack_delay_lets_data_arrive_before_the_ack(simulate):
    sim = simulate("bybit", "--rate", "50", "--ack-delay", "0.6")
    ws = sim.connect("/v5/public/spot")
    sent = time.monotonic()
    request(ws, "subscribe", ["orderbook.50.BTCUSDT"])
    frames = recv_until(ws, lambda f: f and f[-1].get("op") == "subscribe")
    assert time.monotonic() - sent >= 0.5
    assert frames[0]["type"] == "snapshot" and len(frames) > 3 and frames[-1]["success"] is True
