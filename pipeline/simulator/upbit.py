"""Upbit: ``trade`` and ``orderbook`` in the SIMPLE format on ``/websocket/v1``.

Every frame the server sends is binary (opcode 2) holding UTF-8 JSON with numbers as JSON
numbers. A request is one JSON array ``[{"ticket":..},{"format":"SIMPLE"},{"type":"trade",
"codes":[..],"isOnlyRealtime":true},..]``; there is no ack, and a new request replaces the
connection's subscriptions (Upbit has no unsubscribe). Without ``isOnlyRealtime`` a subscription
starts with a ``"st":"SNAPSHOT"`` frame. Errors follow Upbit's list (``NO_TICKET``, ``NO_TYPE``,
``NO_CODES``, ``INVALID_PARAM``, ``WRONG_FORMAT``); a rejected code gets
``{"error":{"name":"INVALID_PARAM","message":"code X is not supported."}}`` (that message text
is the simulator's) while the request's other codes are subscribed. Text ``PING`` is answered
with ``{"status":"UP"}``; a connection with no traffic either way for 120 s is closed.
Simplifications: the format is always SIMPLE, orderbooks always show 15 units (a ``.N`` suffix
on a code is accepted and ignored), ``isOnlySnapshot`` is treated like a normal subscription.
"""
from __future__ import annotations

import re
import time

import orjson

from pipeline.exchanges.base import derived_id
from pipeline.simulator.core import Channel, Exchange, Frame, Outcome, Rejected, dumps, now_ms
from pipeline.simulator.market import Samples, collect, fixture_frames

CODE = re.compile(r"^[A-Z0-9]{2,10}-[A-Z0-9]{2,12}$")
UNITS = 15


def error(name: str, message: str) -> bytes:
    return dumps({"error": {"name": name, "message": message}})


class Upbit(Exchange):
    name = "upbit"
    binary = True
    channels = {c.name: c for c in (Channel("trade", "trade"), Channel("orderbook", "orderbook"))}
    depth = 40
    min_levels = 20
    idle_timeout = 120.0

    def samples(self) -> dict[str, Samples]:
        rows: list = []
        for m in fixture_frames("upbit/trade.jsonl"):
            rows.append((m["cd"], {"price": m["tp"], "size": m["tv"], "trade": m["sid"]}))
        for m in fixture_frames("upbit/orderbook.jsonl"):
            for unit in m.get("obu", []):
                rows.append((m["cd"], {"price": unit["bp"], "size": unit["bs"], "book": True}))
                rows.append((m["cd"], {"price": unit["ap"], "size": unit["as"], "book": True}))
        return collect(rows)

    def defaults(self) -> dict[str, Samples]:
        return {
            "KRW-BTC": Samples().add(price="32292000", size="0.03096742", trade=1676965220395000)
            .add(price="32291000", size="0.41", book=True).add(price="32293000", size="1.2004", book=True),
            "KRW-LAMB": Samples().add(price="127.0", size="46.48838371", trade=1618678262000003)
            .add(price="126.0", size="688682.44561413", book=True).add(price="128.0", size="502824.98156754", book=True),
        }

    def route(self, path: str) -> tuple[list, dict]:
        if path.split("?")[0].rstrip("/") != "/websocket/v1":
            raise Rejected(404, "Not Found")
        return [], {}

    def handle(self, conn, message: str | bytes) -> Outcome:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        if text.strip() == "PING":
            return Outcome(replies=[b'{"status":"UP"}'])
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Outcome(replies=[error("WRONG_FORMAT", "Requested using wrong format")])
        if not isinstance(request, list) or not all(isinstance(part, dict) for part in request):
            return Outcome(replies=[error("WRONG_FORMAT", "Requested using wrong format")])
        if not any("ticket" in part for part in request):
            return Outcome(replies=[error("NO_TICKET", "Ticket field must be contained.")])
        for part in request:
            if "format" in part and part["format"] not in ("SIMPLE", "DEFAULT", "SIMPLE_LIST", "JSON_LIST"):
                return Outcome(replies=[error("INVALID_PARAM", f"format {part['format']} is not supported.")])
        types = [part for part in request if "type" in part]
        if not types:
            return Outcome(replies=[error("NO_TYPE", "type field not exists.")])
        out = Outcome(unsubscribe=list(conn.subs))
        for part in types:
            if "codes" not in part:
                return Outcome(replies=[error("NO_CODES", "codes field not exists.")])
            if not part["codes"]:
                return Outcome(replies=[error("INVALID_PARAM", "codes field is empty.")])
            if part["type"] not in ("trade", "orderbook", "ticker"):
                return Outcome(replies=[error("INVALID_PARAM", f"type {part['type']} is not supported.")])
            realtime = bool(part.get("isOnlyRealtime") or part.get("is_only_realtime"))
            for code in part["codes"]:
                code = str(code).split(".")[0].upper()
                if not CODE.match(code) or not self.valid_symbol(code):
                    out.replies.append(error("INVALID_PARAM", f"code {code} is not supported."))
                elif part["type"] in self.channels:
                    out.subscribe.append(((code, part["type"]), realtime))
        return out

    def start(self, stream) -> None:
        ids = stream.market.profile.ids
        if stream.channel.data_type == "trade":
            stream.state["k"] = 0
            stream.state["sid"] = ids.get("trade", 1618678262000003) + stream.rng.randrange(10**6) * 1000

    def _trade(self, stream, update: list) -> dict:
        market, trade = stream.market, update[0]
        tick, lot = market.profile.tick, market.profile.lot
        k = stream.state["k"] = stream.state["k"] + 1
        # sequential ids are unique but not always in order: now and then one lands below the last
        late = stream.rng.random() < 0.05
        sid = stream.state["sid"] + 1000 * k - (1500 if late else 0)
        stamp = now_ms()
        traded = stamp - stream.rng.randrange(5)
        close = market.profile.price
        change = "RISE" if trade.price > close else "FALL" if trade.price < close else "EVEN"
        return {
            "ty": "trade", "cd": stream.symbol, "tms": stamp,
            "td": time.strftime("%Y-%m-%d", time.gmtime(traded // 1000)),
            "ttm": time.strftime("%H:%M:%S", time.gmtime(traded // 1000)), "ttms": traded,
            "tp": tick.number(trade.price), "tv": lot.number(trade.lots), "ab": "BID" if trade.buy else "ASK",
            "pcp": tick.number(close), "c": change, "cp": tick.number(abs(trade.price - close)),
            "sid": sid, "st": "REALTIME",
        }

    def _orderbook(self, stream, kind: str) -> Frame:
        book, tick, lot = stream.market.book, stream.market.profile.tick, stream.market.profile.lot
        asks, bids = book.top(False, UNITS), book.top(True, UNITS)
        stamp = now_ms()
        data = dumps({
            "ty": "orderbook", "cd": stream.symbol, "tms": stamp,
            "tas": lot.number(sum(q for _, q in asks)), "tbs": lot.number(sum(q for _, q in bids)),
            "obu": [{"ap": tick.number(a[0]), "bp": tick.number(b[0]), "as": lot.number(a[1]), "bs": lot.number(b[1])}
                    for a, b in zip(asks, bids)],
            "st": kind,
        })
        return Frame(data, (derived_id(stamp * 1000, data),))

    def render(self, stream, update: list, corrupt: bool) -> Frame:
        if stream.channel.data_type == "trade":
            trade = stream.state["last"] = self._trade(stream, update)
            return Frame(dumps(trade), (str(trade["sid"]),))
        return self._orderbook(stream, "REALTIME")

    def on_subscribe(self, stream, conn, label: object) -> list[Frame]:
        if label:  # isOnlyRealtime
            return []
        if stream.channel.data_type == "orderbook":
            return [self._orderbook(stream, "SNAPSHOT")]
        last = stream.state.get("last")
        return [Frame(dumps({**last, "st": "SNAPSHOT"}), (str(last["sid"]),))] if last else []

    def level(self, stream, price: int, lots: int) -> list:
        return [stream.market.profile.tick.number(price), stream.market.profile.lot.number(lots)]


EXCHANGE = Upbit
