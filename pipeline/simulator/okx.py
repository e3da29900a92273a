"""OKX v5 public: ``books`` and ``trades`` on ``/ws/v5/public``.

``{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"},..]}`` is answered per arg
with ``{"event":"subscribe","arg":{..},"connId":".."}``, or for an unknown/rejected instrument
``{"event":"error","code":"60018","msg":"Wrong URL or channel:books,instId:X doesn't exist.",
"connId":".."}``; ``unsubscribe`` likewise. Text ``ping`` -> text ``pong``; a connection with no
traffic either way for 30 s is closed.

``books``: each subscription starts with a ``snapshot`` of the true book (``prevSeqId`` -1), then
``update`` deltas whose ``seqId`` jumps and whose ``prevSeqId`` is the previous ``seqId``; every
frame carries the CRC32 ``checksum`` of the top 25 levels (``pipeline.checksum.okx_checksum``).
``trades``: one trade per frame, contiguous ``tradeId``; a subscription starts with the last
trade made before it, as OKX does.
"""
from __future__ import annotations

import re

import orjson

from pipeline.checksum import OKX_DEPTH, okx_checksum
from pipeline.simulator.core import Channel, Exchange, Frame, Outcome, Rejected, dumps, now_ms, sorted_changes
from pipeline.simulator.market import Samples, collect, fixture_frames
from pipeline.exchanges.base import book_update_id

INSTRUMENT = re.compile(r"^[A-Z0-9]{2,12}(-[A-Z0-9]{2,12}){1,3}$")


def _int32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


class Okx(Exchange):
    name = "okx"
    channels = {c.name: c for c in (Channel("books", "orderbook", delta=True, checksum=True), Channel("trades", "trade"))}
    depth = 200
    min_levels = 50
    idle_timeout = 30.0

    def samples(self) -> dict[str, Samples]:
        rows: list = []
        for m in fixture_frames("okx/books.jsonl"):
            if m.get("action") == "snapshot":
                data = m["data"][0]
                for p, s, *_ in data["bids"][:50] + data["asks"][:50]:
                    rows.append((m["arg"]["instId"], {"price": p, "size": s, "book": True}))
        for m in fixture_frames("okx/trades.jsonl"):
            for t in m.get("data", []):
                rows.append((t["instId"], {"price": t["px"], "size": t["sz"], "trade": t["tradeId"]}))
        found = collect(rows)
        return {"BTC-USDT": found.pop("BTC-USDT"), **found} if "BTC-USDT" in found else found

    def defaults(self) -> dict[str, Samples]:
        return {"BTC-USDT": Samples().add(price="30236", size="0.0002", trade=338476307)
                .add(price="30243.5", size="1.44679", book=True).add(price="30244", size="0.08", book=True)}

    def route(self, path: str) -> tuple[list, dict]:
        if path.split("?")[0].rstrip("/") != "/ws/v5/public":
            raise Rejected(404, "Not Found")
        return [], {}

    def _conn_id(self, conn) -> str:
        if "connId" not in conn.state:
            conn.state["connId"] = f"{conn.rng.getrandbits(32):08x}"
        return conn.state["connId"]

    def handle(self, conn, message: str | bytes) -> Outcome:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        if text == "ping":
            return Outcome(replies=[b"pong"])
        conn_id = self._conn_id(conn)
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            msg = None
        op = msg.get("op") if isinstance(msg, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(msg.get("args"), list):
            return Outcome(replies=[dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:200]}", "connId": conn_id})])
        head = {"id": msg["id"]} if "id" in msg else {}
        out = Outcome()
        for arg in msg["args"]:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            inst = arg.get("instId") if isinstance(arg, dict) else None
            if channel not in self.channels or not isinstance(inst, str) or not INSTRUMENT.match(inst) or not self.valid_symbol(inst):
                out.acks.append(dumps({**head, "event": "error", "code": "60018",
                                       "msg": f"Wrong URL or channel:{channel},instId:{inst} doesn't exist.", "connId": conn_id}))
                continue
            out.acks.append(dumps({**head, "event": op, "arg": {"channel": channel, "instId": inst}, "connId": conn_id}))
            if op == "subscribe":
                out.subscribe.append(((inst, channel), None))
            else:
                out.unsubscribe.append((inst, channel))
        return out

    def start(self, stream) -> None:
        ids = stream.market.profile.ids
        if stream.channel.data_type == "trade":
            stream.state["trade_id"] = ids.get("trade", 338476307) + stream.rng.randrange(10**6)
        else:
            stream.state["seq"] = ids.get("book", 12_000_000_000) + stream.rng.randrange(10**6)
            stream.last_id = str(stream.state["seq"])

    def _levels(self, stream, levels: list[tuple[int, int]]) -> list[list[str]]:
        tick, lot = stream.market.profile.tick, stream.market.profile.lot
        return [[tick.text(p, trim=True), lot.text(q, trim=True), "0", str(1 + q % 7 if q else 0)] for p, q in levels]

    def _books(self, stream, action: str, bids: list, asks: list, prev: int, seq: int, corrupt: bool = False) -> bytes:
        book = stream.market.book
        checksum = okx_checksum(self._levels(stream, book.top(True, OKX_DEPTH)), self._levels(stream, book.top(False, OKX_DEPTH)))
        if corrupt:
            checksum = _int32(checksum + 1)
        return dumps({
            "arg": {"channel": "books", "instId": stream.symbol}, "action": action,
            "data": [{"asks": self._levels(stream, asks), "bids": self._levels(stream, bids), "ts": str(now_ms()),
                      "checksum": checksum, "prevSeqId": prev, "seqId": seq}],
        })

    def render(self, stream, update: list, corrupt: bool) -> Frame:
        if stream.channel.data_type == "trade":
            tick, lot = stream.market.profile.tick, stream.market.profile.lot
            trade, trade_id = update[0], stream.state["trade_id"]
            stream.state["trade_id"] = trade_id + 1
            data = dumps({"arg": {"channel": "trades", "instId": stream.symbol}, "data": [{
                "instId": stream.symbol, "tradeId": str(trade_id), "px": tick.text(trade.price, trim=True),
                "sz": lot.text(trade.lots, trim=True), "side": "buy" if trade.buy else "sell", "ts": str(now_ms()), "count": "1",
            }]})
            return Frame(data, (str(trade_id),))
        prev = stream.state["seq"]
        seq = stream.state["seq"] = prev + 1 + stream.rng.randrange(90)
        data = self._books(stream, "update", sorted_changes(update, True), sorted_changes(update, False), prev, seq, corrupt)
        return Frame(data, (str(seq),))

    def on_subscribe(self, stream, conn, label: object) -> list[Frame]:
        if stream.channel.data_type == "trade":
            return [stream.last] if stream.last else []
        book, seq = stream.market.book, stream.state["seq"]
        return [Frame(self._books(stream, "snapshot", book.top(True), book.top(False), -1, seq), (book_update_id(seq, True),))]


EXCHANGE = Okx
