"""Bad CURVE settings, through real processes: one line naming the variable, exit status 2, no
traceback, no key material in the message; ingest stops before it connects anywhere."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth

from pipeline.config import SETTINGS
from tests.conftest import REPO
from tests.security.helpers import keygen

TIMEOUT_SECS = 20.0
SECRET, SERVER, AUTHORIZED = "ZMQ_CURVE_SECRET_KEY_FILE", "ZMQ_CURVE_SERVER_KEY_FILE", "ZMQ_CURVE_AUTHORIZED_KEYS"
TRAP = "{trap}"
INGEST = ["ingest", "--exchange", "binance", "--symbols", "btcusdt", "--ws-url", TRAP]


def layout(root: Path) -> dict[str, str]:
    """Good and bad key files; {name: path}."""
    keys = root / "keys"
    check_public, check_secret = keygen(keys, "check")
    ingest_public, ingest_secret = keygen(keys, "ingest")
    authorized = keys / "authorized"
    authorized.mkdir()
    shutil.copy(ingest_public, authorized)
    (keys / "empty").mkdir()
    bad_folder = keys / "bad-authorized"
    bad_folder.mkdir()
    shutil.copy(ingest_public, bad_folder)
    (bad_folder / "broken.key").write_text("curve\n    public-key = \"not-a-z85-key\"\n")
    (keys / "garbage").write_bytes(os.urandom(200))
    (keys / "empty-file").write_text("")
    # a secret file whose public line belongs to another pair
    other_public = zmq.auth.load_certificate(ingest_public)[0].decode()
    text = check_secret.read_text()
    (keys / "mismatched.key_secret").write_text(
        text.replace(zmq.auth.load_certificate(check_secret)[0].decode(), other_public))
    # a secret key one character short
    secret = zmq.auth.load_certificate(check_secret)[1].decode()
    (keys / "short.key_secret").write_text(text.replace(secret, secret[:-1]))
    return {"check.key": str(check_public), "check.key_secret": str(check_secret), "ingest.key": str(ingest_public),
            "ingest.key_secret": str(ingest_secret), "authorized": str(authorized), "empty": str(keys / "empty"),
            "bad-authorized": str(bad_folder), "garbage": str(keys / "garbage"), "empty-file": str(keys / "empty-file"),
            "mismatched": str(keys / "mismatched.key_secret"), "short": str(keys / "short.key_secret"),
            "missing": str(keys / "no-such.key"), "folder": str(keys), "secret-text": secret}


# id: (arguments, environment {variable: key name}, variable the one line must name)
CASES = {
    "check-secret-missing": (["check"], {SECRET: "missing", AUTHORIZED: "authorized"}, SECRET),
    "check-secret-is-a-folder": (["check"], {SECRET: "folder", AUTHORIZED: "authorized"}, SECRET),
    "check-secret-is-the-public-file": (["check"], {SECRET: "check.key", AUTHORIZED: "authorized"}, SECRET),
    "check-secret-garbage": (["check"], {SECRET: "garbage", AUTHORIZED: "authorized"}, SECRET),
    "check-secret-empty-file": (["check"], {SECRET: "empty-file", AUTHORIZED: "authorized"}, SECRET),
    "check-secret-mismatched-pair": (["check"], {SECRET: "mismatched", AUTHORIZED: "authorized"}, SECRET),
    "check-secret-short-key": (["check", "--zmq-curve-secret-key-file", "@short"], {AUTHORIZED: "authorized"}, SECRET),
    "check-authorized-missing": (["check"], {SECRET: "check.key_secret", AUTHORIZED: "missing"}, AUTHORIZED),
    "check-authorized-empty-folder": (["check", "--zmq-curve-authorized-keys", "@empty"], {SECRET: "check.key_secret"}, AUTHORIZED),
    "check-authorized-broken-file-in-folder": (["check"], {SECRET: "check.key_secret", AUTHORIZED: "bad-authorized"}, AUTHORIZED),
    "check-authorized-garbage-file": (["check"], {SECRET: "check.key_secret", AUTHORIZED: "garbage"}, AUTHORIZED),
    "check-authorized-without-secret": (["check"], {AUTHORIZED: "authorized"}, SECRET),
    "check-secret-without-authorized": (["check"], {SECRET: "check.key_secret"}, AUTHORIZED),
    "ingest-server-key-missing": (INGEST, {SECRET: "ingest.key_secret", SERVER: "missing"}, SERVER),
    "ingest-server-key-garbage": (INGEST + ["--zmq-curve-server-key-file", "@garbage"], {SECRET: "ingest.key_secret"}, SERVER),
    "ingest-secret-without-server-key": (INGEST, {SECRET: "ingest.key_secret"}, SERVER),
    "ingest-server-key-without-secret": (INGEST, {SERVER: "check.key"}, SECRET),
    "ingest-secret-is-the-public-file": (INGEST + ["--zmq-curve-secret-key-file", "@ingest.key"], {SERVER: "check.key"}, SECRET),
}


@pytest.fixture(scope="module")
def trap():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return layout(tmp_path_factory.mktemp("curve-keys"))


@pytest.fixture(scope="module")
def results(tmp_path_factory, trap, keys):
    """Every case at once; {id: (exit status, output)}."""
    trap_url = f"ws://127.0.0.1:{trap.getsockname()[1]}"
    started = {}
    for case, (args, extra, _) in CASES.items():
        tmp = tmp_path_factory.mktemp(case)
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith(("AWS_", "COLLECTOR_"))}
        env.update(LOG_DIR=str(tmp / "logs"), DATA_DIR=str(tmp / "data"), METRICS_PORT="0",
                   ZMQ_PULL=f"ipc://{tmp}/pull", ZMQ_PUSH=f"ipc://{tmp}/push", PYTHONUNBUFFERED="1")
        env.update({variable: keys[name] for variable, name in extra.items()})
        argv = [trap_url if a == TRAP else keys[a[1:]] if a.startswith("@") else a for a in args]
        process = subprocess.Popen([sys.executable, "-m", "stages.cli", *argv], cwd=REPO, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started[case] = process
    done = {}
    deadline = time.monotonic() + TIMEOUT_SECS
    for case, process in started.items():
        try:
            output, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            done[case] = (None, output.decode(errors="replace"))
            continue
        done[case] = (process.returncode, output.decode(errors="replace"))
    return done


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_curve_setting_is_one_line_naming_the_variable(results, keys, case):
    status, output = results[case]
    assert status is not None, f"still running after {TIMEOUT_SECS}s (the bad setting was accepted): {output!r}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 2, output
    assert len(lines) == 1, output
    assert CASES[case][2] in lines[0], output
    assert "Traceback" not in output
    assert keys["secret-text"] not in output and keys["secret-text"][:-1] not in output


def test_an_ingest_with_a_bad_key_connects_nowhere(results, trap):
    assert all(results[case][0] == 2 for case in CASES if case.startswith("ingest"))
    try:
        connection, _ = trap.accept()
    except BlockingIOError:
        return
    connection.close()
    pytest.fail("an ingest with a bad CURVE setting connected to its exchange")
