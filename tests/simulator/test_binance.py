"""Binance: combined and raw stream paths, SUBSCRIBE acks, contiguous trade ids, depth20, pings."""
from __future__ import annotations

import json
from decimal import Decimal

import websocket

from tests.simulator.conftest import close_code, dump_at, recv_json, recv_until


def subscribe(ws, params, rid=1, method="SUBSCRIBE"):
    ws.send(json.dumps({"method": method, "params": params, "id": rid}))


def test_subscribe_is_acknowledged_and_streams_are_wrapped_with_contiguous_trade_ids(simulate):
    sim = simulate("binance", "--rate", "100", "--seed", "1")
    ws = sim.connect("/stream")
    subscribe(ws, ["btcusdt@depth20@100ms", "btcusdt@trade"])
    assert recv_json(ws) == {"result": None, "id": 1}
    frames = recv_until(ws, lambda f: sum(x["stream"] == "btcusdt@trade" for x in f) >= 30)
    trades = [f["data"] for f in frames if f["stream"] == "btcusdt@trade"]
    assert set(trades[0]) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
    assert [t["t"] for t in trades] == list(range(trades[0]["t"], trades[0]["t"] + len(trades)))
    assert all(t["s"] == "BTCUSDT" and len(t["p"].split(".")[1]) == 8 for t in trades)
    depths = [f["data"] for f in frames if f["stream"] == "btcusdt@depth20@100ms"]
    assert depths and all(set(d) == {"lastUpdateId", "bids", "asks"} for d in depths)
    assert all(len(d["bids"]) == 20 and len(d["asks"]) == 20 for d in depths)
    assert all(Decimal(d["bids"][0][0]) < Decimal(d["asks"][0][0]) for d in depths)
    ids = [d["lastUpdateId"] for d in depths]
    assert ids == sorted(set(ids)) and any(b - a > 1 for a, b in zip(ids, ids[1:]))

    ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
    listing = recv_until(ws, lambda f: f and "result" in f[-1])[-1]
    assert listing == {"result": ["btcusdt@depth20@100ms", "btcusdt@trade"], "id": 3}
    subscribe(ws, ["btcusdt@trade"], rid=2, method="UNSUBSCRIBE")
    recv_until(ws, lambda f: f and f[-1] == {"result": None, "id": 2})
    after = recv_until(ws, lambda f: len(f) >= 10)
    assert {f["stream"] for f in after} == {"btcusdt@depth20@100ms"}


def test_url_streams_and_raw_payloads(simulate):
    sim = simulate("binance", "--rate", "100")
    combined = sim.connect("/stream?streams=btcusdt@trade/ethusdt@trade")
    streams = {f["stream"] for f in recv_until(combined, lambda f: len(f) >= 10)}
    assert streams == {"btcusdt@trade", "ethusdt@trade"}
    raw = sim.connect("/ws/ethusdt@trade")
    frame = recv_json(raw)
    assert frame["e"] == "trade" and frame["s"] == "ETHUSDT"
    try:
        sim.connect("/nowhere")
        raise AssertionError("an unknown path was accepted")
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 404


def test_rejected_symbol_gets_binance_error_and_nothing_is_subscribed(simulate):
    sim = simulate("binance", "--reject-symbols", "ethusdt", "--rate", "100")
    ws = sim.connect("/stream")
    subscribe(ws, ["btcusdt@trade", "ethusdt@trade"], rid=7)
    assert recv_json(ws) == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 7}
    subscribe(ws, ["btcusdt@trade"], rid=8)
    assert recv_json(ws) == {"result": None, "id": 8}
    assert recv_json(ws)["stream"] == "btcusdt@trade"


def test_server_pings_and_drops_a_client_that_never_pongs(simulate):
    sim = simulate("binance", "--ping-interval", "0.2", "--pong-timeout", "0.6")
    polite = sim.connect("/stream")
    opcode, _ = polite.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING  # websocket-client answers it

    rude = sim.connect("/stream")
    rude.settimeout(5)
    pings = 0
    while True:  # recv_frame does not answer pings
        frame = rude.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_PING:
            pings += 1
        elif frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            assert close_code(frame.data) == 1008
            break
    assert pings >= 2
    opcode, _ = polite.recv_data(control_frame=True)  # the client that pongs stays connected
    assert opcode == websocket.ABNF.OPCODE_PING


def test_depth20_frames_show_the_top_of_the_true_book(simulate):
    sim = simulate("binance", "--rate", "100", "--count", "15", dump_every=0.1)
    ws = sim.connect("/stream?streams=btcusdt@depth20@100ms")
    last = recv_until(ws, lambda f: len(f) == 15)[-1]["data"]
    dump = dump_at(sim, "btcusdt", 15)
    assert dump["seq"] == str(last["lastUpdateId"])
    assert dump["bids"][:20] == last["bids"] and dump["asks"][:20] == last["asks"]


def test_the_binance_adapter_reads_what_the_simulator_sends(simulate):
    from pipeline.exchanges.binance import EXCHANGE as adapter

    sim = simulate("binance", "--rate", "100", "--count", "5")
    ws = sim.connect(adapter.connection_url(sim.url(""), ["btcusdt"], ["orderbook", "trades"]).removeprefix(sim.url("")))
    for message in adapter.subscribe_messages(["btcusdt"], ["orderbook", "trades"]):
        ws.send(message)
    parsed = [adapter.parse(ws.recv_data()[1]) for _ in range(11)]
    assert parsed[0].control == "ack"
    received = sorted({(r.data_type, r.exchange_sequence_id) for p in parsed[1:] for r in p.records})
    assert received == sorted((m["data_type"], m["exchange_sequence_id"]) for m in sim.manifest(at_least=len(received)))
