"""pipeline/topology.py: the shipped supervisord.conf is the rendering, and what supervisord is told."""
from __future__ import annotations

import re

import configparser
import shlex
from pathlib import Path

import pytest

from pipeline import topology
from pipeline.topology import EXCHANGES, SIMULATOR_PORTS, render_supervisord, stages

REPO = Path(__file__).resolve().parents[2]


def programs(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {name.split(":", 1)[1]: dict(parser[name]) for name in parser.sections() if name.startswith("program:")}


def args(program: dict[str, str]) -> list[str]:
    return shlex.split(program["command"])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_shipped_supervisord_conf_is_the_rendering():
    assert (REPO / "supervisord.conf").read_text() == render_supervisord()


def test_every_stage_is_a_program_and_nothing_else():
    assert set(programs(render_supervisord())) == {stage.name for stage in stages()}
    assert {f"ingest-{name}" for name in EXCHANGES} | {"check", "persist", "archive"} == {s.name for s in stages()}


@pytest.mark.parametrize("simulate", [False, True], ids=["real", "simulate"])
def test_every_program_restarts_and_stops_with_term_within_its_budget_plus_margin(simulate):
    budgets = {stage.name: stage.shutdown_secs for stage in stages() + topology.simulators()}
    rendered = programs(render_supervisord(simulate=simulate))
    assert rendered
    for name, program in rendered.items():
        assert program["autorestart"] == "true", name
        assert program["autostart"] == "true", name
        assert program["stopsignal"] == "TERM", name
        assert int(program["stopwaitsecs"]) > budgets[name], name
        assert program["stopasgroup"] == "true", name


def test_shutdown_budgets_are_the_specs():
    budgets = {stage.name: stage.shutdown_secs for stage in stages()}
    assert {k: v for k, v in budgets.items() if not k.startswith("ingest-")} == {"check": 10, "persist": 15, "archive": 5}
    assert {v for k, v in budgets.items() if k.startswith("ingest-")} == {10}


def test_ingest_stops_before_check_before_persist():
    # supervisord stops programs from the highest priority number to the lowest
    priority = {name: int(p["priority"]) for name, p in programs(render_supervisord()).items()}
    ingest = {v for k, v in priority.items() if k.startswith("ingest-")}
    assert min(ingest) > priority["check"] > priority["persist"]
    assert priority["check"] > priority["archive"]


def test_every_stage_serves_on_its_own_metrics_port_matching_status():
    rendered = programs(render_supervisord())
    ports = {name: int(option(args(p), "--metrics-port")) for name, p in rendered.items()}
    assert len(set(ports.values())) == len(ports)
    assert {name: f"http://127.0.0.1:{port}" for name, port in ports.items()} == topology.health_endpoints()


def test_the_hops_use_the_same_endpoint_on_both_ends():
    rendered = {name: args(p) for name, p in programs(render_supervisord()).items()}
    check_pull, check_push = option(rendered["check"], "--pull"), option(rendered["check"], "--push")
    assert {option(a, "--push") for name, a in rendered.items() if name.startswith("ingest-")} == {check_pull}
    assert option(rendered["persist"], "--pull") == check_push
    assert "0.0.0.0" not in render_supervisord()


def test_simulate_adds_a_simulator_per_exchange_and_points_each_ingest_at_it():
    rendered = programs(render_supervisord(simulate=True))
    for name in EXCHANGES:
        simulator = args(rendered[f"simulate-{name}"])
        port = int(option(simulator, "--port"))
        assert port == SIMULATOR_PORTS[name]
        assert option(simulator, "--exchange") == name
        ingest = args(rendered[f"ingest-{name}"])
        assert option(ingest, "--ws-url") == f"ws://127.0.0.1:{port}"
        assert int(rendered[f"simulate-{name}"]["priority"]) < int(rendered[f"ingest-{name}"]["priority"])  # starts first
    assert len(set(SIMULATOR_PORTS.values())) == len(EXCHANGES)


def test_without_simulate_there_is_no_simulator_and_no_ws_url():
    text = render_supervisord()
    assert "simulate" not in "".join(programs(text))
    assert "--ws-url" not in text


def test_render_options_command_state_dir_extra_args_and_exchanges():
    text = render_supervisord(command="/venv/bin/collector", state_dir="/run/cc", extra_args=("--log-level", "debug"),
                              exchanges=("okx",))
    rendered = programs(text)
    assert set(rendered) == {"ingest-okx", "check", "persist", "archive"}
    for program in rendered.values():
        argv = args(program)
        assert argv[0] == "/venv/bin/collector"
        assert option(argv, "--log-level") == "debug"
    assert "pidfile=/run/cc/crypto-collector-supervisord.pid" in text
    # a Unix socket path must stay short: it lives in /tmp, named after the state folder
    socket = re.search(r"serverurl=unix://(\S+)", text).group(1)
    assert socket.startswith("/tmp/crypto-collector-") and len(socket) < 100
    assert socket != re.search(r"serverurl=unix://(\S+)", render_supervisord(state_dir="/run/other")).group(1)


def test_every_rendered_command_parses_with_the_clis_own_options():
    """A renamed option would make supervisord restart a failing stage forever; click must accept each line."""
    from stages import cli

    rendered = programs(render_supervisord(simulate=True))
    ctx = cli.cli.make_context("collector", ["--help"], resilient_parsing=True)
    for name, program in rendered.items():
        argv = args(program)[1:]
        command = cli.cli.get_command(ctx, argv[0])
        assert command is not None, name
        command.make_context(argv[0], argv[1:], resilient_parsing=False)
