"""Coinbase Exchange: ``level2``/``level2_batch``, ``matches`` and ``heartbeat`` on path ``/``.

``{"type":"subscribe","product_ids":[..],"channels":["level2_batch","matches","heartbeat"]}``
(channels may be objects ``{"name":..,"product_ids":[..]}``) is answered by the cumulative
``subscriptions`` message; an unknown or rejected product fails the whole request with
``{"type":"error","message":"Failed to subscribe","reason":"X is not a valid product"}``.
``level2`` and ``level2_batch`` are one book stream (the batch form: several changes per
``l2update``). A book subscription starts with a ``snapshot`` of the whole (true) book, a matches
subscription with ``last_match``. Heartbeats: one per product per second.
"""
from __future__ import annotations

import random
import re
import uuid

import orjson

from pipeline.exchanges.base import derived_id
from pipeline.simulator.core import Channel, Exchange, Frame, Outcome, Rejected, dumps, iso, now_us, sorted_changes
from pipeline.simulator.market import Samples, Trade, collect, fixture_frames

PRODUCT = re.compile(r"^[A-Z0-9]{2,12}-[A-Z0-9]{2,12}$")
CHANNEL_OF = {"level2": "level2", "level2_batch": "level2", "matches": "matches", "heartbeat": None}


class Coinbase(Exchange):
    name = "coinbase"
    channels = {c.name: c for c in (Channel("level2", "orderbook", delta=True), Channel("matches", "trade"))}
    depth = 150
    min_levels = 40
    periodic_secs = 1.0

    def samples(self) -> dict[str, Samples]:
        rows: list = []
        for m in fixture_frames("coinbase/level2.jsonl"):
            if m.get("type") == "snapshot":
                levels = m.get("bids", [])[:30] + m.get("asks", [])[:30]
                rows += [(m["product_id"], {"price": p, "size": s, "book": True}) for p, s in levels]
        for m in fixture_frames("coinbase/matches.jsonl"):
            if "product_id" in m:
                rows.append((m["product_id"], {"price": m["price"], "size": m["size"], "trade": m["trade_id"], "sequence": m["sequence"]}))
        return collect(rows)

    def defaults(self) -> dict[str, Samples]:
        return {
            "BTC-USD": Samples().add(price="61837.63", size="0.00214316", trade=615012345, sequence=80231234567)
            .add(price="61837.62", size="0.51", book=True).add(price="61837.65", size="0.1038", book=True),
            "BAND-GBP": Samples().add(price="14.7775", size="0.04", trade=881613, sequence=333938798)
            .add(price="14.7693", size="27.51", book=True).add(price="14.8024", size="12.77", book=True),
        }

    def route(self, path: str) -> tuple[list, dict]:
        if path.split("?")[0] != "/":
            raise Rejected(404, "Not Found")
        return [], {"heartbeat": set()}

    def handle(self, conn, message: str | bytes) -> Outcome:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            return Outcome(replies=[dumps({"type": "error", "message": "Malformed JSON", "reason": "invalid character"})])
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind not in ("subscribe", "unsubscribe"):
            return Outcome(replies=[dumps({"type": "error", "message": "Failed to subscribe", "reason": f"{kind} is not a valid type"})])
        pairs, error = self._pairs(msg)
        if error:
            return Outcome(acks=[dumps({"type": "error", "message": "Failed to subscribe", "reason": error})])
        heartbeat: set = conn.state.setdefault("heartbeat", set())
        after = dict(conn.subs)
        out = Outcome()
        for name, product in pairs:
            channel = CHANNEL_OF[name]
            if channel is None:
                (heartbeat.add if kind == "subscribe" else heartbeat.discard)(product)
            elif kind == "subscribe" and (product, channel) not in after:
                after[(product, channel)] = name
                out.subscribe.append(((product, channel), name))
            elif kind == "unsubscribe" and (product, channel) in after:
                del after[(product, channel)]
                out.unsubscribe.append((product, channel))
        listing: dict[str, list[str]] = {}
        for (product, _), name in after.items():
            listing.setdefault(name, []).append(product)
        if heartbeat:
            listing["heartbeat"] = sorted(heartbeat)
        out.acks.append(dumps({"type": "subscriptions", "channels": [{"name": n, "product_ids": p} for n, p in listing.items()]}))
        return out

    def _pairs(self, msg: dict) -> tuple[list[tuple[str, str]], str | None]:
        products = msg.get("product_ids") or []
        pairs = []
        for channel in msg.get("channels") or []:
            name, ids = (channel.get("name"), channel.get("product_ids") or products) if isinstance(channel, dict) else (channel, products)
            if name not in CHANNEL_OF:
                return [], f"{name} is not a valid channel"
            for product in ids:
                if not isinstance(product, str) or not PRODUCT.match(product) or not self.valid_symbol(product):
                    return [], f"{product} is not a valid product"
                pairs.append((name, product))
        return pairs, None

    def periodic(self, conn) -> list[bytes]:
        frames = []
        for product in sorted(conn.state.get("heartbeat", ())):
            values = conn.sim.market(product).vars
            frames.append(dumps({
                "type": "heartbeat", "sequence": values.get("sequence", 0), "last_trade_id": values.get("last_trade_id", 0),
                "product_id": product, "time": iso(now_us()),
            }))
        return frames

    def start(self, stream) -> None:
        values, ids = stream.market.vars, stream.market.profile.ids
        values.setdefault("sequence", ids.get("sequence", 333938798) + stream.rng.randrange(10**6))
        if stream.channel.data_type == "trade":
            stream.state["trade_id"] = ids.get("trade", 881613) + stream.rng.randrange(10**5)
            values["last_trade_id"] = stream.state["trade_id"] - 1

    def _match(self, stream, rng: random.Random, trade: Trade, trade_id: int, sequence: int, us: int) -> dict:
        tick, lot = stream.market.profile.tick, stream.market.profile.lot
        return {
            "type": "match", "trade_id": trade_id,
            "maker_order_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "taker_order_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "side": "sell" if trade.buy else "buy",  # the maker's side
            "size": lot.text(trade.lots), "price": tick.text(trade.price),
            "product_id": stream.symbol, "sequence": sequence, "time": iso(us),
        }

    def render(self, stream, update: list, corrupt: bool) -> Frame:
        market, us = stream.market, now_us()
        if stream.channel.data_type == "trade":
            trade_id = stream.state["trade_id"]
            stream.state["trade_id"] = trade_id + 1
            sequence = market.vars["sequence"] = market.vars["sequence"] + 1 + stream.rng.randrange(50)  # type: ignore[operator]
            market.vars["last_trade_id"] = trade_id
            match = stream.state["last"] = self._match(stream, stream.rng, update[0], trade_id, sequence, us)
            return Frame(dumps(match), (str(trade_id),))
        tick, lot = market.profile.tick, market.profile.lot
        changes = [["buy", tick.text(p), lot.text(q)] for p, q in sorted_changes(update, True)]
        changes += [["sell", tick.text(p), lot.text(q)] for p, q in sorted_changes(update, False)]
        data = dumps({"type": "l2update", "product_id": stream.symbol, "changes": changes, "time": iso(us)})
        return Frame(data, (derived_id(us, data),))

    def on_subscribe(self, stream, conn, label: object) -> list[Frame]:
        market = stream.market
        if stream.channel.data_type == "trade":
            last = stream.state.get("last")
            if last is None:  # the trade before the first one this server made
                rng = random.Random(f"{conn.sim.seed}:last_match:{stream.symbol}")
                trade = Trade(market.last_price, market.profile.trade_lots[0], False)
                last = self._match(stream, rng, trade, stream.state["trade_id"] - 1, market.vars["sequence"], now_us() - 1_000_000)
            return [Frame(dumps({**last, "type": "last_match"}), (str(last["trade_id"]),))]
        tick, lot = market.profile.tick, market.profile.lot
        data = dumps({
            "type": "snapshot", "product_id": stream.symbol,
            "asks": [[tick.text(p), lot.text(q)] for p, q in market.book.top(False)],
            "bids": [[tick.text(p), lot.text(q)] for p, q in market.book.top(True)],
        })
        return [Frame(data, (derived_id(None, data),))]

    def level(self, stream, price: int, lots: int) -> list:
        return [stream.market.profile.tick.text(price), stream.market.profile.lot.text(lots)]


EXCHANGE = Coinbase
