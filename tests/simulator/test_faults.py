"""Fault injection: each option does exactly what the manifest says, on the wire, repeatably."""
from __future__ import annotations

import json
import time

import websocket

from tests.conftest import wait_for
from tests.simulator.conftest import close_code, nothing_within, recv_until

COUNT = 40
FAULTS = ("--gap-every", "5", "--reorder-every", "4", "--duplicate-every", "7", "--malformed-every", "6")


def expected_wire(count: int, gap: int, reorder: int, duplicate: int, malformed: int) -> list:
    """Event numbers in the order they go out (``None``: a malformed frame), per the documented rules."""
    out, held = [], []
    for n in range(1, count + 1):
        if n % gap == 0:
            pass
        elif n % reorder == 0:
            held.append(n)
        else:
            out += [n, n] if n % duplicate == 0 else [n]
            out += held
            held = []
        if n % malformed == 0:
            out.append(None)
    return out + held


def trade_numbers(frames: list, first_id: int) -> list:
    return [None if f is None else f["data"]["t"] - first_id + 1 for f in frames]


def test_gap_duplicate_reorder_and_malformed_on_the_wire_and_in_the_manifest(simulate):
    sim = simulate("binance", "--rate", "200", "--count", str(COUNT), "--seed", "11", *FAULTS)
    ws = sim.connect("/stream?streams=btcusdt@trade")
    expected = expected_wire(COUNT, 5, 4, 7, 6)
    frames = recv_until(ws, lambda f: len(f) == len(expected))
    assert nothing_within(ws, 0.3)  # --count: nothing after the last event
    manifest = wait_for(lambda: (m := sim.manifest()) and len(m) >= len(expected) + COUNT // 5 and m, what="manifest")
    first_id = int(next(m for m in manifest if m["event"] == 1)["exchange_sequence_id"])
    assert trade_numbers(frames, first_id) == expected

    sent = [m for m in manifest if m["sent"]]
    assert [m["event"] if m["fault"] != "malformed" else None for m in sent] == expected
    for line in sent:
        if line["fault"] == "malformed":
            assert line["exchange_sequence_id"] is None and line["event"] % 6 == 0
        else:
            assert int(line["exchange_sequence_id"]) == first_id + line["event"] - 1
    faults = {m["event"]: m["fault"] for m in manifest if m["fault"] not in (None, "malformed")}
    assert {n for n, f in faults.items() if f == "gap"} == {n for n in range(1, COUNT + 1) if n % 5 == 0}
    assert {n for n, f in faults.items() if f == "reorder"} == {n for n in range(1, COUNT + 1) if n % 4 == 0 and n % 5}
    assert {n for n, f in faults.items() if f == "duplicate"} == {7, 14, 21}  # 28 is reordered, 35 a gap
    assert all(not m["sent"] for m in manifest if m["fault"] == "gap")


def test_two_runs_with_one_seed_send_the_same_manifest(simulate):
    args = ("--rate", "200", "--count", "30", "--seed", "99", *FAULTS)
    sims = [simulate("okx", *args), simulate("okx", *args)]
    for sim in sims:
        ws = sim.connect("/ws/v5/public")
        ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"},
                                                          {"channel": "trades", "instId": "BTC-USDT"}]}))
    def finished(lines: list) -> bool:  # event 30 of each stream ends with its malformed frame
        return all(any(x["channel"] == c and x["event"] == 30 and x["fault"] == "malformed" for x in lines) for c in ("books", "trades"))

    manifests = []
    for sim in sims:
        lines = wait_for(lambda: (m := sim.manifest()) and finished(m) and m, what="30 events per stream")
        manifests.append({c: [x for x in lines if x["channel"] == c] for c in ("books", "trades")})
    assert manifests[0] == manifests[1]
    assert len({x["exchange_sequence_id"] for x in manifests[0]["books"]}) > 20


def test_book_delta_drops_and_corrupt_checksums(simulate):
    sim = simulate("okx", "--rate", "200", "--count", "30", "--drop-book-delta-every", "10", "--corrupt-checksum-every", "4")
    ws = sim.connect("/ws/v5/public")
    ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"},
                                                      {"channel": "trades", "instId": "BTC-USDT"}]}))
    frames = recv_until(ws, lambda f: sum(x.get("action") == "update" for x in f) == 27
                        and sum(x.get("arg", {}).get("channel") == "trades" and "data" in x for x in f) == 30)
    updates = [f["data"][0] for f in frames if f.get("action") == "update"]
    breaks = [i for i, d in enumerate(updates[1:], 1) if d["prevSeqId"] != updates[i - 1]["seqId"]]
    assert breaks == [9, 18]  # events 10 and 20 were dropped (and 30, the last one)
    manifest = sim.manifest()
    books = {m["event"]: m for m in manifest if m["channel"] == "books" and not m["snapshot"]}
    assert {n for n, m in books.items() if m["fault"] == "drop_book_delta"} == {10, 20, 30}
    assert {n for n, m in books.items() if m["fault"] == "corrupt_checksum"} == {4, 8, 12, 16, 24, 28}
    assert not any(m["fault"] for m in manifest if m["channel"] == "trades")  # neither applies to trades


def test_silence_stops_everything_and_keeps_the_connection(simulate):
    sim = simulate("binance", "--rate", "50", "--silence-after", "0.8", "--silence-for", "1.2", "--ping-interval", "0.1")
    ws = sim.connect("/stream?streams=btcusdt@trade")
    times = []
    start = time.monotonic()
    while time.monotonic() - start < 2.6:
        opcode, _ = ws.recv_data(control_frame=True)
        times.append((time.monotonic(), opcode))
    gaps = [b[0] - a[0] for a, b in zip(times, times[1:])]
    assert max(gaps) >= 1.0  # nothing at all, pings included
    assert times[-1][0] - start > 2.0 and times[-1][1] in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_PING)


def test_disconnects_and_reconnects_lose_nothing_the_manifest_calls_sent(simulate):
    sim = simulate("binance", "--rate", "100", "--disconnect-every", "0.4")
    received = []
    for _ in range(2):
        ws = sim.connect("/stream?streams=btcusdt@trade")
        opened = time.monotonic()
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                assert close_code(data) == 1001 and 0.3 < time.monotonic() - opened < 3
                break
            received.append(json.loads(data)["data"]["t"])
    assert received == sorted(received) and len(received) > 20
    sent = wait_for(lambda: [int(m["exchange_sequence_id"].split(":")[0]) for m in sim.manifest() if m["sent"]], what="manifest")
    assert sent == received


def test_connection_rate_limit_answers_429_with_retry_after(simulate):
    sim = simulate("bybit", "--rate-limit-connections", "2")
    for _ in range(2):
        try:
            sim.connect("/v5/public/spot")
            raise AssertionError("connection accepted")
        except websocket.WebSocketBadStatusException as exc:
            assert exc.status_code == 429 and exc.resp_headers.get("retry-after") == "1"
    ws = sim.connect("/v5/public/spot")
    ws.send(json.dumps({"op": "ping"}))
    assert json.loads(ws.recv())["ret_msg"] == "pong"
