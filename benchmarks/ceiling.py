"""Ceilings: what the pipeline's two transports can do with nothing else in the way.

    python -m benchmarks.ceiling ws --url ws://127.0.0.1:PORT/stream --stream btcusdt@trade --seconds 10 [--recv-data]
    python -m benchmarks.ceiling zmq --mode single|batched --size 172 --seconds 5 [--transport tcp|ipc]

``ws``: a bare websocket-client loop (``skip_utf8_validation=True``) on the load generator: connect,
SUBSCRIBE, then ``recv()`` (or ``recv_data()``, what ingest calls) and count, nothing else.

``zmq``: a bare PUSH/PULL chain of three processes, as many hops as ingest -> check -> persist:
source (PUSH, connects) -> relay (PULL binds, PUSH connects; forwards the frames untouched) ->
sink (PULL binds, counts). ``single`` sends one record per message (one frame); ``batched`` sends
the product's wire format, 512 records per message (header frame + data frame, built like ingest's).
Sends block (no drops): the figure is the most the chain moves.

Each prints one JSON line: ``{"messages": n, "records": n, "seconds": s, ...}``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time

from benchmarks import common

WARMUP_SECS = 0.5


def ws_loop(url: str, stream: str, seconds: float, recv_data: bool) -> dict:
    import websocket

    ws = websocket.create_connection(url, timeout=10, skip_utf8_validation=True, enable_multithread=False)
    ws.send(json.dumps({"method": "SUBSCRIBE", "params": [stream], "id": 1}))
    receive = ws.recv_data if recv_data else ws.recv
    deadline = time.monotonic() + WARMUP_SECS
    while time.monotonic() < deadline:
        receive()
    frames = 0
    nbytes = 0
    started = time.monotonic()
    cpu0 = time.process_time()
    end = started + seconds
    check_every = 256
    while True:
        for _ in range(check_every):
            data = receive()
            nbytes += len(data[1]) if recv_data else len(data)
        frames += check_every
        if time.monotonic() >= end:
            break
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    ws.close()
    return {"messages": frames, "records": frames, "bytes": nbytes, "seconds": elapsed, "rate": frames / elapsed,
            "cpu_share": cpu / elapsed}


# -- ZeroMQ chain -------------------------------------------------------------------------------------

def _batched_message(size: int, records: int = 512) -> list[bytes]:
    """A records message as ingest builds it: 512 real-format trades (~172 B) or books (~1.4 KB)."""
    from benchmarks.loadgen import payloads
    from pipeline.records import encode_records

    datas = payloads("btcusdt@trade" if size < 600 else "btcusdt@depth20@100ms", records)
    now = time.time_ns() // 1000
    headers = [("binance", "btcusdt", "trade", str(i), now, now, i, i - 1, False, "1.0.1", len(d), i)
               for i, d in enumerate(datas, 1)]
    return encode_records(headers, datas)


def _source(endpoint: str, mode: str, size: int, hwm: int) -> None:
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    if mode == "single":
        payload = [_batched_message(size, 1)[2]]
    else:
        payload = _batched_message(size)
    try:
        while True:
            push.send_multipart(payload, copy=len(payload[-1]) < 4096)
    except (KeyboardInterrupt, zmq.ZMQError):
        pass


def _relay(pull_ep: str, push_ep: str, hwm: int, ready) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, hwm)
    pull.bind(pull_ep)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(push_ep)
    ready.set()
    try:
        while True:
            push.send_multipart(pull.recv_multipart(copy=False), copy=False)
    except (KeyboardInterrupt, zmq.ZMQError):
        pass


def _sink(endpoint: str, records_per_message: int, seconds: float, hwm: int, ready, results) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, hwm)
    pull.bind(endpoint)
    ready.set()
    pull.recv_multipart(copy=False)
    deadline = time.monotonic() + WARMUP_SECS
    while time.monotonic() < deadline:
        pull.recv_multipart(copy=False)
    messages = 0
    started = time.monotonic()
    end = started + seconds
    while True:
        for _ in range(64):
            pull.recv_multipart(copy=False)
        messages += 64
        if time.monotonic() >= end:
            break
    elapsed = time.monotonic() - started
    results.put({"messages": messages, "records": messages * records_per_message, "seconds": elapsed,
                 "rate": messages * records_per_message / elapsed, "messages_per_s": messages / elapsed})


def _free_endpoint(transport: str, folder: str, name: str) -> str:
    if transport == "ipc":
        return f"ipc://{folder}/{name}.sock"
    return f"tcp://127.0.0.1:{common.free_port()}"


def zmq_chain(mode: str, size: int, seconds: float, transport: str = "tcp", hwm: int = 1000) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="zmqchain-") as folder:
        hop1, hop2 = _free_endpoint(transport, folder, "hop1"), _free_endpoint(transport, folder, "hop2")
        results = ctx.Queue()
        sink_ready, relay_ready = ctx.Event(), ctx.Event()
        records = 1 if mode == "single" else 512
        sink = ctx.Process(target=_sink, args=(hop2, records, seconds, hwm, sink_ready, results), daemon=True)
        relay = ctx.Process(target=_relay, args=(hop1, hop2, hwm, relay_ready), daemon=True)
        source = ctx.Process(target=_source, args=(hop1, mode, size, hwm), daemon=True)
        sink.start()
        relay.start()
        sink_ready.wait(30)
        relay_ready.wait(30)
        source.start()
        try:
            result = results.get(timeout=seconds + 60)
        finally:
            for process in (source, relay, sink):
                if process.is_alive():
                    process.terminate()
            for process in (source, relay, sink):
                process.join(5)
        result.update(mode=mode, size=size, transport=transport)
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bare transport ceilings")
    sub = parser.add_subparsers(dest="what", required=True)
    ws = sub.add_parser("ws")
    ws.add_argument("--url", required=True)
    ws.add_argument("--stream", default="btcusdt@trade")
    ws.add_argument("--seconds", type=float, default=10.0)
    ws.add_argument("--recv-data", action="store_true", help="recv_data() (what ingest calls) instead of recv()")
    chain = sub.add_parser("zmq")
    chain.add_argument("--mode", choices=("single", "batched"), default="single")
    chain.add_argument("--size", type=int, default=172)
    chain.add_argument("--seconds", type=float, default=5.0)
    chain.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    args = parser.parse_args(argv)
    if args.what == "ws":
        result = ws_loop(args.url, args.stream, args.seconds, args.recv_data)
    else:
        result = zmq_chain(args.mode, args.size, args.seconds, args.transport)
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
