"""Binance spot: ``<s>@trade`` and ``<s>@depth20@100ms``.

Paths: ``/stream`` (combined; every frame wrapped ``{"stream":..,"data":..}``), with streams named
in ``?streams=a/b`` or sent later with ``SUBSCRIBE``; ``/ws`` and ``/ws/<stream>`` (raw payloads).
``{"method":"SUBSCRIBE","params":[..],"id":1}`` -> ``{"result":null,"id":1}``; a stream of a
rejected symbol -> ``{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}`` and
nothing of that request is subscribed. Other well-formed stream names (``@bookTicker``...) are
acknowledged and send nothing. The server sends a ping frame every ``--ping-interval`` and drops
a connection that leaves one unanswered for ``--pong-timeout``.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import orjson

from pipeline.simulator.core import Channel, Exchange, Frame, Outcome, Rejected, dumps, now_ms
from pipeline.simulator.market import Samples, collect, fixture_frames

NAME = re.compile(r"^([a-z0-9]+)@([A-Za-z0-9_@]+)$")
METHODS = "SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY"


class Binance(Exchange):
    name = "binance"
    channels = {c.name: c for c in (Channel("trade", "trade"), Channel("depth20@100ms", "orderbook"))}
    depth = 100
    server_pings = True

    def samples(self) -> dict[str, Samples]:
        frames = (m.get("data", m) for m in fixture_frames("binance/trade.jsonl") if isinstance(m, dict))
        return collect((d["s"].lower(), {"price": d["p"], "size": d["q"], "trade": d["t"]}) for d in frames if "s" in d)

    def defaults(self) -> dict[str, Samples]:
        return {"btcusdt": Samples().add(price="61837.63", size="0.02", trade=3735683259)
                .add(price="61837.62", size="0.00009").add(price="61837.64", size="0.048")}

    def _parse(self, names: list) -> tuple[list, list, bool]:
        """(simulated streams, other accepted names, any invalid)."""
        subs, other = [], []
        for name in names:
            match = NAME.match(name) if isinstance(name, str) else None
            if match is None or not self.valid_symbol(match.group(1)):
                return [], [], True
            if match.group(2) in self.channels:
                subs.append(((match.group(1), match.group(2)), name))
            else:
                other.append(name)
        return subs, other, False

    def route(self, path: str) -> tuple[list, dict]:
        url = urlsplit(path)
        if url.path == "/stream":
            names, combined = [n for n in parse_qs(url.query).get("streams", [""])[0].split("/") if n], True
        elif url.path == "/ws":
            names, combined = [], False
        elif url.path.startswith("/ws/"):
            names, combined = [n for n in url.path[4:].split("/") if n], False
        else:
            raise Rejected(404, "Not Found")
        subs, other, invalid = self._parse(names)
        if invalid:
            raise Rejected(400, "Invalid request")
        return subs, {"combined": combined, "other": set(other)}

    def handle(self, conn, message: str | bytes) -> Outcome:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            return Outcome(replies=[dumps({"error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}, "id": None})])
        if not isinstance(msg, dict):
            return Outcome(replies=[dumps({"error": {"code": 2, "msg": "Invalid request: expected an object"}, "id": None})])
        method, rid, params = msg.get("method"), msg.get("id"), msg.get("params", [])
        other: set = conn.state.setdefault("other", set())
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            subs, names, invalid = self._parse(params if isinstance(params, list) else [None])
            if invalid:
                return Outcome(acks=[dumps({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": rid})])
            ack = [dumps({"result": None, "id": rid})]
            if method == "SUBSCRIBE":
                other.update(names)
                return Outcome(acks=ack, subscribe=subs)
            other.difference_update(names)
            return Outcome(acks=ack, unsubscribe=[key for key, _ in subs])
        if method == "LIST_SUBSCRIPTIONS":
            return Outcome(replies=[dumps({"result": sorted(list(conn.subs.values()) + list(other)), "id": rid})])
        return Outcome(replies=[dumps({"error": {"code": 2, "msg": f"Invalid request: unknown variant `{method}`, expected one of {METHODS}"}, "id": rid})])

    def envelope(self, conn, stream, data: bytes) -> bytes:
        if not conn.state.get("combined", True):
            return data
        return b'{"stream":"' + f"{stream.symbol}@{stream.channel.name}".encode() + b'","data":' + data + b"}"

    def start(self, stream) -> None:
        ids = stream.market.profile.ids
        if stream.channel.data_type == "trade":
            stream.state["t"] = ids.get("trade", 3735683259) + stream.rng.randrange(10**6)
        else:
            stream.state["u"] = ids.get("book", 48_000_000_000) + stream.rng.randrange(10**6)
            stream.last_id = str(stream.state["u"])

    def render(self, stream, update: list, corrupt: bool) -> Frame:
        tick, lot = stream.market.profile.tick, stream.market.profile.lot
        if stream.channel.data_type == "trade":
            trade, trade_id = update[0], stream.state["t"]
            stream.state["t"] = trade_id + 1
            event_time = now_ms()
            data = dumps({
                "e": "trade", "E": event_time, "s": stream.symbol.upper(), "t": trade_id,
                "p": tick.text(trade.price, 8), "q": lot.text(trade.lots, 8),
                "T": event_time - stream.rng.randrange(3), "m": not trade.buy, "M": True,
            })
            return Frame(data, (str(trade_id),))
        update_id = stream.state["u"] = stream.state["u"] + 1 + stream.rng.randrange(40)
        return Frame(self._depth(stream, update_id), (str(update_id),))

    def _depth(self, stream, update_id: int) -> bytes:
        book, tick, lot = stream.market.book, stream.market.profile.tick, stream.market.profile.lot
        return dumps({
            "lastUpdateId": update_id,
            "bids": [[tick.text(p, 8), lot.text(q, 8)] for p, q in book.top(True, 20)],
            "asks": [[tick.text(p, 8), lot.text(q, 8)] for p, q in book.top(False, 20)],
        })

    def level(self, stream, price: int, lots: int) -> list:
        return [stream.market.profile.tick.text(price, 8), stream.market.profile.lot.text(lots, 8)]


EXCHANGE = Binance
