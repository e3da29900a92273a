"""The ``collector simulate`` process: configuration errors, SIGTERM, files flushed."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import websocket

from tests.conftest import REPO, wait_for
from tests.simulator.conftest import close_code


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli", "simulate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_an_unknown_exchange_is_one_line_naming_the_variable_and_status_2():
    result = run("--exchange", "nasdaq", "--port", "1")
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(output) == 1 and "EXCHANGE" in output[0]
    assert run("--exchange", "okx", "--port", "1", "--gap-every", "-1").returncode == 2


def test_sigterm_closes_connections_flushes_files_and_exits_0(simulate):
    sim = simulate("bybit", "--rate", "200", dump_every=10)
    ws = sim.connect("/v5/public/spot")
    ws.send(json.dumps({"op": "subscribe", "args": ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"]}))
    wait_for(lambda: len(sim.manifest()) > 20, what="some events")
    started = time.monotonic()
    sim.proc.send_signal(signal.SIGTERM)
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            assert close_code(data) == 1001
            ws.shutdown()
            break
    assert sim.proc.wait(5) == 0 and time.monotonic() - started < 5
    assert sim.manifest_path.read_bytes().endswith(b"\n")
    lines = sim.manifest()
    assert {line["channel"] for line in lines} == {"orderbook.50", "publicTrade"}
    dump = sim.book_dumps()  # the final dump is written on the way out
    assert [d["symbol"] for d in dump] == ["BTCUSDT"] and len(dump[0]["bids"]) == 50
    last_u = max(int(m["exchange_sequence_id"].split(":")[0]) for m in lines if m["channel"] == "orderbook.50")
    assert int(dump[0]["seq"]) == last_u


def test_without_fixtures_every_exchange_streams_synthetic_frames(tmp_path, monkeypatch):
    """A machine with the repository only: built-in samples of the same shape stand in.

    The five simulators run in one event loop in this process (five process start-ups would
    cost more than the rest of the test).
    """
    import asyncio
    import threading

    from pipeline.simulator import create
    from pipeline.simulator.server import Settings, Simulator

    monkeypatch.setenv("COLLECTOR_FIXTURES", str(tmp_path / "absent"))
    subscriptions = {
        "binance": ("/stream?streams=btcusdt@trade/btcusdt@depth20@100ms", None),
        "coinbase": ("/", {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch", "matches"]}),
        "upbit": ("/websocket/v1", [{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}, {"type": "orderbook", "codes": ["KRW-BTC"]}]),
        "okx": ("/ws/v5/public", {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "BTC-USDT"}]}),
        "bybit": ("/v5/public/spot", {"op": "subscribe", "args": ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"]}),
    }
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ports: dict[str, int] = {}

    async def serve_all() -> None:
        runs = []
        for name in subscriptions:
            ready = loop.create_future()
            simulator = Simulator(Settings(exchange=name, port=0, rate=100), create(name))
            runs.append(asyncio.ensure_future(simulator.run(stop, ready)))
            ports[name] = await ready
        await asyncio.gather(*runs)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_all(),))
    thread.start()
    try:
        wait_for(lambda: len(ports) == len(subscriptions), what="five simulators")
        for name, (path, message) in subscriptions.items():
            ws = websocket.create_connection(f"ws://127.0.0.1:{ports[name]}{path}", timeout=5)
            if message is not None:
                ws.send(json.dumps(message))
            kinds = [json.loads(ws.recv_data()[1]) for _ in range(12)]
            assert len(kinds) == 12, name
            ws.close()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    assert not thread.is_alive()
