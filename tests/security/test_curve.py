"""ZeroMQ CURVE on the ingest -> check hop, with real processes and real sockets.

Keys come from the real ``collector keygen``. ``check`` runs as a CURVE server that admits only the
public keys in its authorized folder: an authorized pusher's records arrive, while an unknown key, a
plain (no CURVE) pusher and a client that expects another server's key deliver nothing. The whole
chain (simulator -> ingest as CURVE client -> check -> persist) still works with CURVE on.
"""
from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from pipeline import config as cfg
from pipeline import curve
from pipeline.transport import Puller, Pusher
from tests.conftest import free_port, wait_for
from tests.e2e.feed import trade_records
from tests.e2e.harness import Pipeline
from tests.security.helpers import TestPusher, cli, keygen, log_files, places_with

RECEIVED = "collector_messages_received_total"
QUIET_SECS = 3.0  # how long a refused pusher is given to get something through


class Keys:
    """Key files as an operator lays them out: check's pair, ingest's pair, check's authorized folder."""

    def __init__(self, root: Path):
        self.check_public, self.check_secret = keygen(root / "check-host", "check")
        self.ingest_public, self.ingest_secret = keygen(root / "ingest-host", "ingest-1")
        self.intruder_public, self.intruder_secret = keygen(root / "elsewhere", "intruder")
        self.authorized = root / "check-host" / "authorized"
        self.authorized.mkdir()
        shutil.copy(self.ingest_public, self.authorized)  # only the public key travels

    def check_args(self) -> list[str]:
        return ["--zmq-curve-secret-key-file", str(self.check_secret), "--zmq-curve-authorized-keys", str(self.authorized)]

    def ingest_args(self) -> list[str]:
        return ["--zmq-curve-secret-key-file", str(self.ingest_secret), "--zmq-curve-server-key-file", str(self.check_public)]

    def secrets(self) -> list[str]:
        return [zmq.auth.load_certificate(f)[1].decode() for f in (self.check_secret, self.ingest_secret)]


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path / "keys")


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    for variable in cfg.SETTINGS:  # the runner's own environment must not configure the stages
        if variable not in ("DATA_DIR", "ARCHIVE_URL", "LOG_DIR", "BATCH_INTERVAL"):
            p.env.pop(variable, None)
    yield p
    p.close()


def received(process) -> float:
    return process.metric(RECEIVED, stage="check")


def assert_no_secret_shown(pipeline: Pipeline, keys: Keys, *names: str) -> None:
    texts = log_files(pipeline.root / "logs")
    for name in names:
        process = pipeline[name]
        if process.popen.poll() is None:
            texts[f"{name} /health"] = process.get("/health").decode()
            texts[f"{name} /metrics"] = process.get("/metrics").decode()
        texts[f"{name} output"] = process.output()
    for secret in keys.secrets():
        assert not places_with(secret, texts), "a CURVE secret key was shown"


def test_keygen_writes_a_certificate_pair_with_a_private_secret_file(tmp_path):
    result = cli("keygen", "--output", str(tmp_path / "new" / "keys"), "--name", "check")
    assert result.returncode == 0, result.stderr
    public_file, secret_file = tmp_path / "new" / "keys" / "check.key", tmp_path / "new" / "keys" / "check.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new" / "keys").stat().st_mode) == 0o700
    assert not stat.S_IMODE(public_file.stat().st_mode) & 0o022
    public, no_secret = zmq.auth.load_certificate(public_file)
    public_again, secret = zmq.auth.load_certificate(secret_file)
    assert no_secret is None and public == public_again and zmq.curve_public(secret) == public
    assert public.decode() in result.stdout  # the public key is shown, to compare by eye across hosts
    assert secret.decode() not in result.stdout + result.stderr

    again = cli("keygen", "--output", str(tmp_path / "new" / "keys"), "--name", "check")
    assert again.returncode != 0 and "--force" in again.stderr
    assert zmq.auth.load_certificate(secret_file)[1] == secret, "an existing key was overwritten"
    forced = cli("keygen", "--output", str(tmp_path / "new" / "keys"), "--name", "check", "--force")
    assert forced.returncode == 0 and zmq.auth.load_certificate(secret_file)[1] != secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    bad = cli("keygen", "--output", str(tmp_path), "--name", "../escape")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_only_an_authorized_key_gets_records_into_check(pipeline, keys):
    endpoint = pipeline.ingest_endpoint
    check = pipeline.start("check", "check", "--pull", endpoint, "--push", pipeline.persist_endpoint, *keys.check_args())
    wait_for(lambda: check.ready() or check.popen.poll() is not None, 30, what="check ready")
    assert check.popen.poll() is None, check.output()

    refused = {
        "unknown key": TestPusher(endpoint, keys.intruder_secret, keys.check_public),
        "plain, no CURVE": TestPusher(endpoint),
        "authorized key, wrong server key": TestPusher(endpoint, keys.ingest_secret, keys.intruder_public),
    }
    authorized = None
    try:
        for pusher in refused.values():
            pusher.send(trade_records(["btcusdt"], 200), timeout_ms=1000)
        # the one bounded wait of these tests: nothing may arrive while the refused pushers keep offering
        deadline = time.monotonic() + QUIET_SECS
        while time.monotonic() < deadline:
            assert received(check) == 0, "check accepted records from a peer without an authorized key"
            for pusher in refused.values():
                pusher.send(trade_records(["btcusdt"], 50), timeout_ms=0)
            time.sleep(0.2)
        events = {name: pusher.handshake_events() for name, pusher in refused.items()}
        assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events["unknown key"], "check's ZAP handler did not refuse the key"
        for name, seen in events.items():
            assert zmq.EVENT_CONNECTED in seen, f"{name}: never reached check, so the test proves nothing"
            assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen, f"{name}: completed a handshake with check"

        authorized = TestPusher(endpoint, keys.ingest_secret, keys.check_public)
        assert authorized.send(trade_records(["ethusdt"], 300)) == 300
        for pusher in refused.values():
            pusher.send(trade_records(["btcusdt"], 50), timeout_ms=0)
        wait_for(lambda: received(check) >= 300, 20, what="the authorized pusher's records in check")
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED in authorized.handshake_events()
        time.sleep(0.3)
        assert received(check) == 300, "records of a refused pusher arrived late"
        assert check.metric(RECEIVED, stage="check", symbol="btcusdt") == 0
    finally:
        for pusher in [*refused.values(), authorized]:
            if pusher is not None:
                pusher.close()

    assert_no_secret_shown(pipeline, keys, "check")
    code, _ = check.stop()
    assert code == 0, check.output()
    assert "CURVE on" in check.output()


def test_the_whole_chain_runs_with_ingest_as_a_curve_client(pipeline, keys):
    """The check host's processes share one environment (check's own pair, which check also trusts, so a
    local ingest authenticates with it); a "remote" ingest brings its own pair by options."""
    shutil.copy(keys.check_public, keys.authorized)
    pipeline.env.update(ZMQ_CURVE_SECRET_KEY_FILE=str(keys.check_secret), ZMQ_CURVE_AUTHORIZED_KEYS=str(keys.authorized),
                        ZMQ_CURVE_SERVER_KEY_FILE=str(keys.check_public))
    _, ws_port = pipeline.simulator("binance", "--seed", "3", "--rate", "100")
    pipeline.start("check", "check", "--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint)
    pipeline.start("persist", "persist", "--pull", pipeline.persist_endpoint)
    ingest = ("ingest", "--exchange", "binance", "--feeds", "orderbook,trades", "--ws-url", f"ws://127.0.0.1:{ws_port}",
              "--push", pipeline.ingest_endpoint)
    pipeline.start("ingest-local", *ingest, "--symbols", "btcusdt")
    pipeline.start("ingest-remote", *ingest, "--symbols", "ethusdt", *keys.ingest_args())
    for name in ("check", "persist", "ingest-local", "ingest-remote"):
        process = pipeline[name]
        wait_for(lambda p=process: p.ready() or p.popen.poll() is not None, 30, what=f"{name} ready")
        assert process.popen.poll() is None, f"{name} exited:\n{process.output()}"

    check = pipeline["check"]
    wait_for(lambda: all(check.metric(RECEIVED, stage="check", symbol=s) >= 30 for s in ("btcusdt", "ethusdt")), 60,
             what="records of both ingests in check")
    wait_for(lambda: pipeline["persist"].metric("collector_db_snapshots_written_total") >= 60, 60,
             what="records through ingest -> check (CURVE) -> persist into DuckDB")
    for name in ("ingest-local", "ingest-remote"):
        assert pipeline[name].health()["messages_dropped"] == 0, name
    assert "CURVE on" in check.output() and "CURVE on" in pipeline["ingest-remote"].output()
    assert "CURVE" not in pipeline["persist"].output()  # the check -> persist hop stays plain, on loopback

    assert_no_secret_shown(pipeline, keys, "check", "ingest-local", "ingest-remote", "persist")
    results = pipeline.stop_all()
    for name in ("check", "persist", "ingest-local", "ingest-remote"):
        assert results[name][0] == 0, f"{name}:\n{pipeline[name].output()[-3000:]}"


def test_a_refused_ingest_says_so_counts_its_drops_and_gets_in_once_authorized(pipeline, keys):
    _, ws_port = pipeline.simulator("binance", "--seed", "4", "--rate", "100")
    check_args = ("--pull", pipeline.ingest_endpoint, "--push", pipeline.persist_endpoint, *keys.check_args())
    check = pipeline.start("check", "check", *check_args)
    ingest = pipeline.start("ingest", "ingest", "--exchange", "binance", "--symbols", "btcusdt", "--feeds", "trades",
                            "--ws-url", f"ws://127.0.0.1:{ws_port}", "--push", pipeline.ingest_endpoint,
                            "--zmq-curve-secret-key-file", str(keys.intruder_secret),
                            "--zmq-curve-server-key-file", str(keys.check_public))
    for process in (check, ingest):
        wait_for(lambda p=process: p.ready() or p.popen.poll() is not None, 30, what=f"{process.name} ready")
        assert process.popen.poll() is None, process.output()
    # the refused ingest keeps reading its exchange, says why nothing gets through, and counts every drop
    wait_for(lambda: "refused the CURVE handshake (key not authorized)" in ingest.output(), 30,
             what="ingest saying check refused its key")
    wait_for(lambda: ingest.health()["messages_dropped"] > 0, 30, what="ingest counting what it cannot deliver")
    assert ingest.health()["degraded_reason"] == "backpressure"
    assert received(check) == 0
    assert check.stop()[0] == 0

    # the operator authorizes the key and restarts check; the same ingest process gets in
    shutil.copy(keys.intruder_public, keys.authorized)
    check = pipeline.start("check-2", "check", *check_args)
    wait_for(lambda: check.ready() or check.popen.poll() is not None, 30, what="check-2 ready")
    wait_for(lambda: received(check) > 0, 30, what="the newly authorized ingest's records in check")
    assert check.stop()[0] == 0 and ingest.stop()[0] == 0


# -- the transport in-process: the single-file form of the authorized keys, and the plain fast path

def test_a_single_authorized_key_file_admits_that_key_only(keys):
    context = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    conf = cfg.load({"zmq_curve_secret_key_file": str(keys.check_secret),
                     "zmq_curve_authorized_keys": str(keys.ingest_public)})
    puller = Puller(endpoint, 100, ctx=context, settings=conf)
    ok = TestPusher(endpoint, keys.ingest_secret, keys.check_public)
    other = TestPusher(endpoint, keys.intruder_secret, keys.check_public)
    try:
        assert puller.curve and puller.socket.mechanism == zmq.CURVE and puller.socket.curve_server
        other.send(trade_records(["solusdt"], 5), batch=1)
        ok.send(trade_records(["btcusdt"], 5), batch=1)
        got = [wait_for(lambda: puller.recv(100), 10, what="a message") for _ in range(5)]
        assert all(b"btcusdt" in frames[1].bytes for frames in got)
        wait_for(lambda: zmq.EVENT_HANDSHAKE_FAILED_AUTH in other.handshake_events(), 10, what="the other key refused")
        assert puller.recv(300) is None
    finally:
        ok.close()
        other.close()
        puller.close()
        context.term()


def test_a_curve_pusher_reaches_a_curve_puller_and_without_keys_both_stay_plain(keys):
    context = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = curve.ServerKeys(*curve.load_secret("x", str(keys.check_secret)),
                              curve.load_authorized("x", str(keys.authorized)), str(keys.authorized))
    client = curve.ClientKeys(*curve.load_secret("x", str(keys.ingest_secret)), curve.load_public("x", str(keys.check_public)))
    assert server.secret_key.decode() not in repr(server) and client.secret_key.decode() not in repr(client)
    puller = Puller(endpoint, 100, ctx=context, curve_keys=server)
    pusher = Pusher(endpoint, 100, "test", ctx=context, curve_keys=client)
    plain_endpoint = f"tcp://127.0.0.1:{free_port()}"
    plain_puller = Puller(plain_endpoint, 100, ctx=context, settings=cfg.load({"zmq_curve_authorized_keys": None}))
    plain_pusher = Pusher(plain_endpoint, 100, "test", ctx=context, settings=cfg.load({}))
    try:
        assert pusher.send([b"hello"], 1)
        assert wait_for(lambda: puller.recv(100), 10, what="a CURVE message")[0].bytes == b"hello"
        assert plain_pusher.send([b"plain"], 1)
        assert wait_for(lambda: plain_puller.recv(100), 10, what="a plain message")[0].bytes == b"plain"
        assert not plain_puller.curve and plain_puller.socket.mechanism == zmq.NULL
        assert not plain_pusher.curve and plain_pusher.socket.mechanism == zmq.NULL
    finally:
        for socket in (pusher, plain_pusher, puller, plain_puller):
            socket.close(**({"linger_ms": 0} if isinstance(socket, Pusher) else {}))
        context.term()

