"""The stages of a whole pipeline on one machine, and where each serves its metrics.

``collector run`` renders its supervisord configuration from this list, the shipped
``supervisord.conf`` is the same rendering (a test keeps them equal), and ``collector status`` asks
these endpoints, so the three can never disagree.
"""
from __future__ import annotations

import dataclasses
import hashlib

from pipeline.config import DEFAULT_INGEST_ENDPOINT, DEFAULT_PERSIST_ENDPOINT


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # supervisord program name
    args: tuple[str, ...]  # after ``collector``
    metrics_port: int
    shutdown_secs: int  # the stage's own budget after SIGTERM


# Symbols recorded by default, in each exchange's own form.
DEFAULT_SYMBOLS = {
    "binance": "btcusdt,ethusdt",
    "coinbase": "BTC-USD,ETH-USD",
    "upbit": "KRW-BTC,KRW-ETH",
    "okx": "BTC-USDT,ETH-USDT",
    "bybit": "BTCUSDT,ETHUSDT",
}
EXCHANGES = tuple(DEFAULT_SYMBOLS)
SIMULATOR_PORTS = {name: 9201 + i for i, name in enumerate(EXCHANGES)}


def stages(exchanges: tuple[str, ...] = EXCHANGES) -> list[Stage]:
    ingest = [
        Stage(
            f"ingest-{name}",
            ("ingest", "--exchange", name, "--symbols", DEFAULT_SYMBOLS[name], "--feeds", "orderbook,trades",
             "--push", DEFAULT_INGEST_ENDPOINT),
            9101 + EXCHANGES.index(name),
            10,
        )
        for name in exchanges
    ]
    return ingest + [
        Stage("check", ("check", "--pull", DEFAULT_INGEST_ENDPOINT, "--push", DEFAULT_PERSIST_ENDPOINT), 9110, 10),
        Stage("persist", ("persist", "--pull", DEFAULT_PERSIST_ENDPOINT), 9111, 15),
        Stage("archive", ("archive",), 9112, 5),
    ]


def simulators(exchanges: tuple[str, ...] = EXCHANGES) -> list[Stage]:
    return [
        Stage(f"simulate-{name}", ("simulate", "--exchange", name, "--port", str(SIMULATOR_PORTS[name])), 0, 5)
        for name in exchanges
    ]


def health_endpoints(exchanges: tuple[str, ...] = EXCHANGES) -> dict[str, str]:
    return {stage.name: f"http://127.0.0.1:{stage.metrics_port}" for stage in stages(exchanges)}


SUPERVISOR_HEADER = """\
; crypto-collector: every stage of the pipeline as a supervisord program.
; Rendered from pipeline/topology.py (``collector run`` renders the same, plus the simulators with
; --simulate); a test keeps this file equal to the rendering.
;
; Scaling out: run several ingest processes per exchange with the symbols split between them, e.g.
;   [program:ingest-binance-2]  command=collector ingest --exchange binance --symbols solusdt,xrpusdt ... --metrics-port 9106
; every ingest pushes to the same check endpoint (PULL binds, PUSH connects); give each its own
; --metrics-port and add it to docker/prometheus.yml.
;
; Stop order: supervisord stops programs in reverse priority: ingest first, then check, persist
; (which flushes to DuckDB) and archive; stopwaitsecs is above each stage's own shutdown budget.

[supervisord]
nodaemon=true
logfile=/dev/null
logfile_maxbytes=0
pidfile={pidfile}

[unix_http_server]
file={socket}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket}
"""

PRIORITY = {"simulate": 10, "persist": 100, "archive": 100, "check": 200, "ingest": 300}


def render_supervisord(command: str = "collector", simulate: bool = False, state_dir: str = "/tmp",
                       extra_args: tuple[str, ...] = (), exchanges: tuple[str, ...] = EXCHANGES) -> str:
    """A supervisord configuration running every stage (and, with ``simulate``, the exchange simulators)."""
    # a Unix socket path must stay under ~100 bytes, so it lives in /tmp, named after the state folder
    tag = "" if state_dir == "/tmp" else "-" + hashlib.sha1(state_dir.encode()).hexdigest()[:10]
    sections = [SUPERVISOR_HEADER.format(pidfile=f"{state_dir}/crypto-collector-supervisord.pid",
                                         socket=f"/tmp/crypto-collector{tag}-supervisor.sock")]
    programs = (simulators(exchanges) if simulate else []) + stages(exchanges)
    for stage in programs:
        args = list(stage.args)
        if stage.metrics_port:
            args += ["--metrics-port", str(stage.metrics_port)]
        if simulate and args[0] == "ingest":
            args += ["--ws-url", f"ws://127.0.0.1:{SIMULATOR_PORTS[args[2]]}"]
        if args[0] in ("ingest", "check", "persist", "archive"):
            args += list(extra_args)
        sections.append(
            f"[program:{stage.name}]\n"
            f"command={command} {' '.join(args)}\n"
            f"priority={PRIORITY[args[0]]}\n"
            "autostart=true\n"
            "autorestart=true\n"
            "startsecs=2\n"
            "stopsignal=TERM\n"
            f"stopwaitsecs={stage.shutdown_secs + 10}\n"
            "stopasgroup=true\n"
            "stdout_logfile=/dev/stdout\n"
            "stdout_logfile_maxbytes=0\n"
            "redirect_stderr=true\n"
        )
    return "\n".join(sections)
