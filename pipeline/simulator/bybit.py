"""Bybit v5 public spot: ``orderbook.50.<S>`` and ``publicTrade.<S>`` on ``/v5/public/spot``.

``{"op":"subscribe","args":[..≤10],"req_id"?}`` gets one answer per request:
``{"success":true,"ret_msg":"subscribe","conn_id":"..","op":"subscribe"}``; more than 10 args, an
unknown or rejected symbol (``Invalid symbol :[topic]``), an unknown topic (``error:handler not
found,topic:..``) or a topic already subscribed answer ``"success":false`` (the request's valid
topics are still subscribed). ``{"op":"ping"}`` -> ``{"success":true,"ret_msg":"pong",..}``.
Connections with no traffic either way for 10 minutes are closed.

``orderbook.50``: a ``snapshot`` of the true 50-level book on each subscription, then ``delta``s
with contiguous ``u`` and increasing ``seq``. ``publicTrade``: one to three trades per frame,
contiguous ``i``. Other depths (1, 200, 1000) are not simulated.
"""
from __future__ import annotations

import re

import orjson

from pipeline.simulator.core import Channel, Exchange, Frame, Outcome, Rejected, dumps, now_ms, sorted_changes
from pipeline.simulator.market import Samples, collect, fixture_frames
from pipeline.exchanges.base import book_update_id

SYMBOL = re.compile(r"^[A-Z0-9]{4,20}$")
BOOK, TRADE = "orderbook.50", "publicTrade"
ALPHABET = "0123456789abcdefghijklmnopqrstuv"


class Bybit(Exchange):
    name = "bybit"
    channels = {c.name: c for c in (Channel(BOOK, "orderbook", delta=True), Channel(TRADE, "trade", max_trades=3))}
    depth = 50
    min_levels = 50  # a liquid book: always 50 levels a side
    idle_timeout = 600.0

    def samples(self) -> dict[str, Samples]:
        rows: list = []
        for m in fixture_frames("bybit/orderbook.200.jsonl")[:1]:
            data = m["data"]
            rows += [(data["s"], {"price": p, "size": s, "book": True, "book_id": data["u"], "sequence": data["seq"]})
                     for p, s in data["b"][:50] + data["a"][:50]]
        for m in fixture_frames("bybit/publicTrade.jsonl"):
            rows += [(t["s"], {"price": t["p"], "size": t["v"], "trade": t["i"]}) for t in m.get("data", [])]
        return collect(rows)

    def defaults(self) -> dict[str, Samples]:
        return {"BTCUSDT": Samples().add(price="65140.5", size="0.002705", trade=2290000001189048101)
                .add(price="65140.4", size="0.885797", book=True, book_id=62505424, sequence=112488545865)
                .add(price="65140", size="0.014", book=True)}

    def route(self, path: str) -> tuple[list, dict]:
        if path.split("?")[0].rstrip("/") != "/v5/public/spot":
            raise Rejected(404, "Not Found")
        return [], {}

    def _answer(self, conn, msg: dict, success: bool, ret_msg: str, op: str) -> bytes:
        if "conn_id" not in conn.state:
            rng = conn.rng
            conn.state["conn_id"] = "".join(rng.choice(ALPHABET) for _ in range(20)) + "-" + "".join(rng.choice(ALPHABET) for _ in range(5))
        answer = {"success": success, "ret_msg": ret_msg, "conn_id": conn.state["conn_id"]}
        if "req_id" in msg:
            answer["req_id"] = msg["req_id"]
        answer["op"] = op
        return dumps(answer)

    def handle(self, conn, message: str | bytes) -> Outcome:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            return Outcome(replies=[self._answer(conn, {}, False, "error:request not valid json", "")])
        op, args = msg.get("op"), msg.get("args") or []
        if op == "ping":
            return Outcome(replies=[self._answer(conn, msg, True, "pong", "ping")])
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            return Outcome(replies=[self._answer(conn, msg, False, f"error:unsupported op {op}", str(op))])
        if len(args) > 10:
            return Outcome(acks=[self._answer(conn, msg, False, "args size >10", op)])
        out, invalid, errors = Outcome(), [], []
        for topic in args:
            channel, _, symbol = str(topic).rpartition(".")
            if channel not in self.channels:
                errors.append(f"error:handler not found,topic:{topic}")
            elif not SYMBOL.match(symbol) or not self.valid_symbol(symbol):
                invalid.append(str(topic))
            elif op == "subscribe" and (symbol, channel) in conn.subs:
                errors.append(f"error:already subscribed,topic:{topic}")
            elif op == "subscribe":
                out.subscribe.append(((symbol, channel), topic))
            else:
                out.unsubscribe.append((symbol, channel))
        if invalid:
            errors.insert(0, f"Invalid symbol :[{','.join(invalid)}]")
        ok_msg = "subscribe" if op == "subscribe" else ""
        out.acks.append(self._answer(conn, msg, not errors, errors[0] if errors else ok_msg, op))
        return out

    def start(self, stream) -> None:
        ids = stream.market.profile.ids
        stream.market.vars.setdefault("seq", ids.get("sequence", 112488545865) + stream.rng.randrange(10**6))
        if stream.channel.data_type == "trade":
            stream.state["i"] = ids.get("trade", 2290000001189048101) + stream.rng.randrange(10**6)
        else:
            stream.state["u"] = ids.get("book_id", 62505424) + stream.rng.randrange(10**6)
            stream.last_id = str(stream.state["u"])

    def _seq(self, stream) -> int:
        seq = stream.market.vars["seq"] = stream.market.vars["seq"] + 1 + stream.rng.randrange(200)  # type: ignore[operator]
        return seq

    def _book(self, stream, kind: str, bids: list, asks: list, seq: int) -> bytes:
        tick, lot = stream.market.profile.tick, stream.market.profile.lot
        stamp = now_ms()
        return dumps({
            "topic": f"{BOOK}.{stream.symbol}", "ts": stamp, "type": kind,
            "data": {"s": stream.symbol,
                     "b": [[tick.text(p, trim=True), lot.text(q, trim=True)] for p, q in bids],
                     "a": [[tick.text(p, trim=True), lot.text(q, trim=True)] for p, q in asks],
                     "u": stream.state["u"], "seq": seq},
            "cts": stamp - 1 - stream.state["u"] % 40,
        })

    def render(self, stream, update: list, corrupt: bool) -> Frame:
        if stream.channel.data_type == "trade":
            tick, lot = stream.market.profile.tick, stream.market.profile.lot
            stamp, trades, ids = now_ms(), [], []
            for trade in update:
                trade_id = stream.state["i"]
                stream.state["i"] = trade_id + 1
                ids.append(str(trade_id))
                trades.append({"i": str(trade_id), "T": stamp - 1, "p": tick.text(trade.price, trim=True),
                               "v": lot.text(trade.lots, trim=True), "S": "Buy" if trade.buy else "Sell",
                               "seq": self._seq(stream), "s": stream.symbol, "BT": False, "RPI": False})
            data = dumps({"topic": f"{TRADE}.{stream.symbol}", "ts": stamp, "type": "snapshot", "data": trades})
            return Frame(data, tuple(ids))
        stream.state["u"] += 1
        seq = stream.state["book_seq"] = self._seq(stream)
        data = self._book(stream, "delta", sorted_changes(update, True), sorted_changes(update, False), seq)
        return Frame(data, (str(stream.state["u"]),))

    def on_subscribe(self, stream, conn, label: object) -> list[Frame]:
        if stream.channel.data_type == "trade":
            return []
        book = stream.market.book
        seq = stream.state.get("book_seq") or stream.market.vars["seq"]
        return [Frame(self._book(stream, "snapshot", book.top(True), book.top(False), seq), (book_update_id(stream.state["u"], True),))]


EXCHANGE = Bybit
