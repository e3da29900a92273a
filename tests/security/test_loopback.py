"""Nothing listens beyond loopback unless configured: every stage's metrics server binds METRICS_HOST
(127.0.0.1 by default) and the default ZeroMQ endpoints are on 127.0.0.1.

Checked three ways: the defaults as declared (settings, topology, supervisord.conf); the listening
sockets of running stage processes (psutil); and the stages started with no option at all, each in a
private network namespace so the fixed default ports cannot collide with anything on this machine.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from pipeline import config as cfg
from pipeline import topology
from tests.conftest import REPO, wait_for
from tests.e2e.harness import Pipeline


def is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.strip("[]"))
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def endpoint_host(endpoint: str) -> str:
    split = urlsplit(endpoint)
    assert split.scheme in ("tcp", "ipc"), endpoint
    return "127.0.0.1" if split.scheme == "ipc" else split.hostname


# -- the defaults as declared

def test_declared_defaults_are_loopback():
    assert cfg.SETTINGS["METRICS_HOST"].default == "127.0.0.1"
    for endpoint in (cfg.DEFAULT_INGEST_ENDPOINT, cfg.DEFAULT_PERSIST_ENDPOINT):
        assert is_loopback(endpoint_host(endpoint)), endpoint
    for stage in topology.stages() + topology.simulators():
        for value in stage.args:
            if "://" in value:
                assert is_loopback(endpoint_host(value)), (stage.name, value)
    shipped = (REPO / "supervisord.conf").read_text()
    endpoints = re.findall(r"tcp://[^\s]+", shipped)
    assert endpoints and all(is_loopback(endpoint_host(e)) for e in endpoints)
    assert "0.0.0.0" not in shipped and "--metrics-host" not in shipped and "METRICS_HOST" not in shipped
    from stages.simulate import command as simulate

    assert next(p for p in simulate.params if p.name == "host").default == "127.0.0.1"


# -- running stages, ports chosen by the test, every host left at its default

@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    p.env.pop("METRICS_HOST", None)
    yield p
    p.close()


def listening(pid: int) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]


def test_running_stages_listen_on_loopback_only(pipeline):
    simulator, ws_port = pipeline.simulator("binance", "--rate", "20")
    pipeline.stages("binance", ws_port, "btcusdt")
    sockets = {name: listening(process.popen.pid) for name, process in pipeline.processes.items()}

    for name, found in sockets.items():
        assert found, f"{name} listens nowhere: the test would prove nothing"
        wide = [(ip, port) for ip, port in found if not is_loopback(ip)]
        assert not wide, f"{name} listens beyond loopback: {wide}"
    for name, process in pipeline.processes.items():
        if process.metrics_port:
            assert ("127.0.0.1", process.metrics_port) in sockets[name], name
    ingest_port = int(pipeline.ingest_endpoint.rsplit(":", 1)[1])
    persist_port = int(pipeline.persist_endpoint.rsplit(":", 1)[1])
    assert ("127.0.0.1", ingest_port) in sockets["check"]
    assert ("127.0.0.1", persist_port) in sockets["persist"]
    assert [port for _, port in sockets["ingest-binance"]] == [pipeline["ingest-binance"].metrics_port]
    assert ("127.0.0.1", ws_port) in sockets["simulate-binance"]


# -- no option at all: each stage alone in a private network namespace

def _private_netns_available() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def proc_listening(pid: int) -> list[tuple[str, int]]:
    """LISTEN sockets of the network namespace a process is in, from /proc/PID/net/tcp and tcp6."""
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))  # host-order 32-bit words
            found.append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


DEFAULT_RUNS = {
    # stage: (arguments beyond the stage name, the ports it must listen on with every default)
    "ingest": (["--symbols", "btcusdt"], {9090}),  # the real exchange URL, unreachable in the namespace
    "check": ([], {9090, 5555}),
    "persist": ([], {9090, 5556}),
    "archive": ([], {9090}),
}


@pytest.mark.skipif(not _private_netns_available(), reason="no unprivileged network namespaces (unshare -rn)")
def test_stages_with_every_default_listen_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in cfg.SETTINGS and not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(REPO)
    processes = {}
    try:
        for stage, (args, _) in DEFAULT_RUNS.items():
            cwd = tmp_path / stage
            cwd.mkdir()
            out = open(cwd / "out", "wb")
            processes[stage] = (subprocess.Popen(["unshare", "-rn", sys.executable, "-m", "stages.cli", stage, *args],
                                                 cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT), cwd / "out")
        for stage, (popen, out) in processes.items():
            expected = DEFAULT_RUNS[stage][1]

            def up(popen=popen, expected=expected):
                assert popen.poll() is None, out.read_text()
                return expected <= {port for _, port in proc_listening(popen.pid)}

            wait_for(up, 30, what=f"{stage} listening on {sorted(expected)}")
            found = proc_listening(popen.pid)
            assert {port for _, port in found} == expected, (stage, found)
            wide = [(ip, port) for ip, port in found if not is_loopback(ip)]
            assert not wide, f"{stage} with every default listens beyond loopback: {wide}"
            assert all(ip == "127.0.0.1" for ip, _ in found), (stage, found)
        for stage, (popen, out) in processes.items():
            popen.send_signal(signal.SIGTERM)
        for stage, (popen, out) in processes.items():
            assert popen.wait(timeout=20) == 0, f"{stage}:\n{out.read_text()[-2000:]}"
    finally:
        for popen, _ in processes.values():
            if popen.poll() is None:
                popen.kill()
                popen.wait()
