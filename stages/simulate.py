"""``collector simulate``: one exchange's WebSocket API on a local port, with fault injection.

Faults count each stream's events (``exchange:symbol:channel``) and are deterministic under
``--seed``; ``--manifest`` records every event sent or skipped, ``--book-dump`` the simulator's
true book. SIGTERM/SIGINT close the connections, flush both files and exit 0.
"""
from __future__ import annotations

import asyncio
import signal

import click
from loguru import logger

from pipeline import logs
from pipeline.config import ConfigError, load, options
from pipeline.simulator import MODULES, create
from pipeline.simulator.server import Settings, Simulator

EVERY = click.IntRange(min=0)
SECONDS = click.FloatRange(min=0)


@click.command("simulate")
@options("EXCHANGE", "LOG_LEVEL", "LOG_DIR", "LOG_RETENTION_DAYS")
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="port to listen on (0: any free port)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--seed", type=int, default=None, help="makes ids and faults repeatable (default: random)")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="events per second per stream")
@click.option("--count", type=click.IntRange(min=0), default=None, help="events per stream, then nothing more (connections stay open)")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None, help="JSONL file: one line per record sent or skipped")
@click.option("--gap-every", type=EVERY, default=0, help="every N-th event of a stream is not sent (its id is skipped)")
@click.option("--duplicate-every", type=EVERY, default=0, help="every N-th event is sent twice")
@click.option("--reorder-every", type=EVERY, default=0, help="every N-th event is sent after the next one")
@click.option("--malformed-every", type=EVERY, default=0, help="after every N-th event, an extra frame that cannot be parsed")
@click.option("--silence-after", type=SECONDS, default=None, help="seconds after the first client connected when the server goes silent")
@click.option("--silence-for", type=SECONDS, default=0.0, help="seconds of silence (no data, pings or pongs; TCP stays open)")
@click.option("--disconnect-every", type=SECONDS, default=None, help="close each connection this many seconds after it opened")
@click.option("--drop-book-delta-every", type=EVERY, default=0, help="every N-th book delta is not sent (delta feeds)")
@click.option("--corrupt-checksum-every", type=EVERY, default=0, help="every N-th OKX books update carries a wrong checksum")
@click.option("--reject-symbols", default="", help="symbols whose subscription gets the exchange's error, comma separated")
@click.option("--fault-symbols", default="", help="inject faults only on these symbols' streams, comma separated")
@click.option("--rate-limit-connections", type=EVERY, default=0, help="the first N connection attempts get HTTP 429, Retry-After: 1")
@click.option("--ack-delay", type=SECONDS, default=0.0, help="seconds before subscription answers are sent")
@click.option("--book-dump", type=click.Path(dir_okay=False), default=None, help="JSONL file of the true book per symbol")
@click.option("--book-dump-every", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="seconds between book dumps")
@click.option("--ping-interval", type=SECONDS, default=20.0, show_default=True, help="server ping frames (Binance); 0: none")
@click.option("--pong-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True, help="drop a connection whose ping stays unanswered this long")
@click.option("--idle-timeout", type=SECONDS, default=None, help="close connections idle this long (default: the exchange's own; 0: never)")
def command(**raw: object) -> None:
    """A local WebSocket server speaking one exchange's protocol, streaming realistic data."""
    config = load({k: raw.pop(k) for k in ("exchange", "log_level", "log_dir", "log_retention_days")})  # type: ignore[misc]
    exchange_name = config.exchange.strip().lower()
    if exchange_name not in MODULES:
        raise ConfigError("EXCHANGE", f"unknown exchange {config.exchange!r}; one of {', '.join(MODULES)}")
    rejected = tuple(s.strip() for s in str(raw.pop("reject_symbols") or "").split(",") if s.strip())
    fault_symbols = tuple(s.strip() for s in str(raw.pop("fault_symbols") or "").split(",") if s.strip())
    settings = Settings(exchange=exchange_name, reject_symbols=rejected, fault_symbols=fault_symbols, **raw)  # type: ignore[arg-type]
    logs.setup(f"simulate-{exchange_name}", config.log_level, config.log_dir, config.log_retention_days)
    simulator = Simulator(settings, create(exchange_name, rejected))
    asyncio.run(_serve(simulator))


async def _serve(simulator: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await simulator.run(stop)
    except OSError as exc:  # the port is taken: one line, not a traceback
        logger.error("cannot listen on {}:{}: {}", simulator.settings.host, simulator.settings.port, exc.strerror or exc)
        raise SystemExit(1) from None
