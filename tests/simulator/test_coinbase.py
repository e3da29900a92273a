"""Coinbase Exchange: cumulative acks, snapshot + l2update, last_match + match, heartbeats, errors."""
from __future__ import annotations

import json

from pipeline.exchanges.base import derived_id, iso_to_us
from tests.simulator.conftest import TextBook, dump_at, recv_json, recv_until


def test_subscriptions_book_matches_and_heartbeats(simulate):
    sim = simulate("coinbase", "--rate", "100", "--count", "40", "--reject-symbols", "NOPE-USD", dump_every=0.1)
    ws = sim.connect("/")
    ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch", "heartbeat"]}))
    assert recv_json(ws) == {"type": "subscriptions", "channels": [
        {"name": "level2_batch", "product_ids": ["BTC-USD"]}, {"name": "heartbeat", "product_ids": ["BTC-USD"]}]}
    ws.send(json.dumps({"type": "subscribe", "channels": [{"name": "matches", "product_ids": ["BTC-USD"]}]}))
    frames = recv_until(ws, lambda f: sum(x["type"] == "heartbeat" for x in f) >= 1
                        and sum(x["type"] == "match" for x in f) == 40 and sum(x["type"] == "l2update" for x in f) == 40)
    acks = [f for f in frames if f["type"] == "subscriptions"]
    assert {c["name"] for c in acks[-1]["channels"]} == {"level2_batch", "heartbeat", "matches"}  # cumulative

    book_frames = [f for f in frames if f["type"] in ("snapshot", "l2update")]
    assert book_frames[0]["type"] == "snapshot"
    book = TextBook()
    for frame in book_frames:
        for price, size in frame.get("bids", []):
            book.set(True, price, size)
        for price, size in frame.get("asks", []):
            book.set(False, price, size)
        for side, price, size in frame.get("changes", []):
            book.set(side == "buy", price, size)
        assert not book.crossed()
    last = book_frames[-1]
    assert len(last["time"].split(".")[1]) == 7  # six digits and the Z
    dump = dump_at(sim, "BTC-USD", 40)
    assert dump["seq"] == derived_id(iso_to_us(last["time"]), json.dumps(last, separators=(",", ":")).encode())
    assert dump["bids"] == book.top(True) and dump["asks"] == book.top(False)

    trades = [f for f in frames if f["type"] in ("last_match", "match")]
    assert trades[0]["type"] == "last_match"
    ids = [t["trade_id"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    sequences = [t["sequence"] for t in trades]
    assert sequences == sorted(sequences)
    heartbeat = next(f for f in frames if f["type"] == "heartbeat")
    assert set(heartbeat) == {"type", "sequence", "last_trade_id", "product_id", "time"}

    ws.send(json.dumps({"type": "subscribe", "product_ids": ["NOPE-USD"], "channels": ["matches"]}))
    error = recv_until(ws, lambda f: f and f[-1]["type"] == "error")[-1]
    assert error == {"type": "error", "message": "Failed to subscribe", "reason": "NOPE-USD is not a valid product"}
    ws.send(json.dumps({"type": "unsubscribe", "product_ids": ["BTC-USD"], "channels": ["matches", "heartbeat"]}))
    ack = recv_until(ws, lambda f: f and f[-1]["type"] == "subscriptions")[-1]
    assert ack["channels"] == [{"name": "level2_batch", "product_ids": ["BTC-USD"]}]


def test_derived_ids_in_the_manifest_hash_the_bytes_sent(simulate):
    sim = simulate("coinbase", "--rate", "100", "--count", "10")
    ws = sim.connect("/")
    ws.send(json.dumps({"type": "subscribe", "product_ids": ["ETH-EUR"], "channels": ["level2"]}))
    raw = []
    while len(raw) < 12:  # ack, snapshot, 10 updates
        raw.append(ws.recv_data()[1])
    expected = [derived_id(None, raw[1])] + [derived_id(iso_to_us(json.loads(r)["time"]), r) for r in raw[2:]]
    manifest = sim.manifest(at_least=len(expected))
    assert [m["exchange_sequence_id"] for m in manifest] == expected
    assert manifest[0]["snapshot"] is True and all(m["data_type"] == "orderbook" and m["sent"] for m in manifest)
