"""OKX: per-arg acks and errors, ping/pong, the books chain and checksum, trades, resubscription."""
from __future__ import annotations

import json
import time

import websocket

from pipeline.checksum import okx_checksum
from tests.conftest import fixture_lines
from tests.simulator.conftest import TextBook, close_code, dump_at, recv_until


def apply_books(book: TextBook, frame: dict) -> dict:
    data = frame["data"][0]
    if frame["action"] == "snapshot":
        book.clear()
    for bid, key in ((True, "bids"), (False, "asks")):
        for price, size, *_ in data[key]:
            book.set(bid, price, size)
    return data


def checksum_of(book: TextBook) -> int:
    return okx_checksum(book.top(True, 25), book.top(False, 25))


def test_checksum_matches_every_recorded_okx_frame():
    books: dict[str, TextBook] = {}
    frames = [json.loads(line) for line in fixture_lines("okx/books.jsonl")]
    for frame in frames:
        book = books.setdefault(frame["arg"]["instId"], TextBook())
        data = apply_books(book, frame)
        assert checksum_of(book) == data["checksum"], frame["arg"]
    assert len(frames) == 175 and len(books) == 3


def subscribe(ws, args, op="subscribe"):
    ws.send(json.dumps({"op": op, "args": args}))


def test_books_chain_checksums_and_resubscription(simulate):
    sim = simulate("okx", "--rate", "100", "--seed", "5", "--reject-symbols", "NOPE-USDT")
    ws = sim.connect("/ws/v5/public")
    books_arg = {"channel": "books", "instId": "BTC-USDT"}
    subscribe(ws, [books_arg, {"channel": "trades", "instId": "BTC-USDT"}, {"channel": "books", "instId": "NOPE-USDT"}])
    frames = recv_until(ws, lambda f: sum(x.get("action") == "update" for x in f) >= 40)
    acks = [f for f in frames if "event" in f]
    conn_id = acks[0]["connId"]
    assert acks == [
        {"event": "subscribe", "arg": books_arg, "connId": conn_id},
        {"event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"}, "connId": conn_id},
        {"event": "error", "code": "60018", "msg": "Wrong URL or channel:books,instId:NOPE-USDT doesn't exist.", "connId": conn_id},
    ]
    books = [f for f in frames if f.get("arg", {}).get("channel") == "books" and "data" in f]
    assert books[0]["action"] == "snapshot" and books[0]["data"][0]["prevSeqId"] == -1
    assert 50 <= len(books[0]["data"][0]["bids"]) <= 400
    book = TextBook()
    previous = None
    for frame in books:
        data = apply_books(book, frame)
        if previous is not None:
            assert data["prevSeqId"] == previous and data["seqId"] > previous
        previous = data["seqId"]
        assert checksum_of(book) == data["checksum"]
        assert not book.crossed()
    trades = [f["data"][0] for f in frames if f.get("arg", {}).get("channel") == "trades" and "data" in f]
    ids = [int(t["tradeId"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert set(trades[0]) == {"instId", "tradeId", "px", "sz", "side", "ts", "count"}

    ws.send("ping")
    assert "pong" in [ws.recv() for _ in range(50)]
    subscribe(ws, [books_arg], op="unsubscribe")
    recv_until(ws, lambda f: f and f[-1] == {"event": "unsubscribe", "arg": books_arg, "connId": conn_id})
    subscribe(ws, [books_arg])
    again = recv_until(ws, lambda f: f and f[-1].get("action") is not None)
    assert again[-1]["action"] == "snapshot" and again[-1]["data"][0]["prevSeqId"] == -1
    assert again[-1]["data"][0]["seqId"] >= previous


def test_book_dump_equals_the_book_rebuilt_from_the_frames(simulate):
    sim = simulate("okx", "--rate", "200", "--count", "60", dump_every=0.1)
    ws = sim.connect("/ws/v5/public")
    subscribe(ws, [{"channel": "books", "instId": "ETH-USDT"}])
    frames = recv_until(ws, lambda f: sum(x.get("action") == "update" for x in f) == 60)
    book = TextBook()
    for frame in frames[1:]:
        data = apply_books(book, frame)
    dump = dump_at(sim, "ETH-USDT", 60)
    assert dump["seq"] == str(data["seqId"])
    assert dump["bids"] == book.top(True) and dump["asks"] == book.top(False)


def test_idle_connections_are_closed_and_pings_keep_them_open(simulate):
    sim = simulate("okx", "--idle-timeout", "0.5")
    idle, busy = sim.connect("/ws/v5/public"), sim.connect("/ws/v5/public")
    idle.settimeout(0.15)
    opened = time.monotonic()
    while True:  # the busy client pings every 0.15 s while the idle one waits
        busy.send("ping")
        assert busy.recv() == "pong"
        try:
            opcode, data = idle.recv_data()
            break
        except websocket.WebSocketTimeoutException:
            assert time.monotonic() - opened < 5, "the idle connection was never closed"
    assert opcode == 8 and close_code(data) == 1001
    for _ in range(5):
        busy.send("ping")
        assert busy.recv() == "pong"
