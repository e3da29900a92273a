"""The CLI's configuration-error contract, through real processes (``python -m stages.cli``):
exactly one line of output (stdout and stderr together) naming the variable, exit status 2, no
traceback, whether the bad value came from the environment or from an option; ingest validates
before it connects anywhere.

All cases start at once (module fixture) and are then checked one by one, so the whole table costs
about as long as the slowest few interpreter start-ups.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import SETTINGS

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_SECS = 20.0  # generous for a loaded 2-CPU machine; a correct run ends in about a second

TRAP_URL = "{trap}"  # replaced by the address of a listening socket no correct run may connect to

INGEST = ["ingest", "--exchange", "binance", "--symbols", "btcusdt", "--ws-url", "ws://127.0.0.1:1"]
TRAPPED_INGEST = ["ingest", "--exchange", "binance", "--symbols", "btcusdt", "--ws-url", TRAP_URL]

# id: (arguments after ``collector``, environment variables, variable the one line must name)
CASES = {
    # a bad value by environment variable and by option, for each stage
    "ingest-env": (INGEST, {"WS_MESSAGE_TIMEOUT_SECS": "2"}, "WS_MESSAGE_TIMEOUT_SECS"),  # below BATCH_INTERVAL 5
    "ingest-option": (INGEST + ["--batch-interval", "abc"], {}, "BATCH_INTERVAL"),
    "check-env": (["check"], {"ZMQ_HWM": "0"}, "ZMQ_HWM"),
    "check-option": (["check", "--sequence-max-streams", "-5"], {}, "SEQUENCE_MAX_STREAMS"),
    "persist-env": (["persist"], {"ARCHIVE_INTERVAL_SECS": "59"}, "ARCHIVE_INTERVAL_SECS"),
    "persist-option": (["persist", "--dedup-window-secs", "inf"], {}, "DEDUP_WINDOW_SECS"),
    "archive-env": (["archive"], {"METRICS_PORT": "70000"}, "METRICS_PORT"),
    "archive-option": (["archive", "--log-retention-days", "1.5"], {}, "LOG_RETENTION_DAYS"),
    # what ingest resolves after parsing: exchange, feed, symbol
    "ingest-unknown-exchange": (["ingest", "--symbols", "btcusdt", "--ws-url", "ws://127.0.0.1:1"], {"EXCHANGE": "foo"}, "EXCHANGE"),
    "ingest-unknown-feed": (INGEST + ["--feeds", "orderbook,candles"], {}, "FEEDS"),
    # validation before any connection: a server that would accept one is listening
    "ingest-unparsable-symbol": (TRAPPED_INGEST[:4] + ["btc$usdt", "--ws-url", TRAP_URL], {}, "SYMBOLS"),
    "ingest-bad-number": (TRAPPED_INGEST + ["--ws-message-timeout-secs", "-3"], {}, "WS_MESSAGE_TIMEOUT_SECS"),
}


def _environment(tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith(("AWS_", "COLLECTOR_"))}
    # Should a bad value be accepted by mistake, the stage must not touch anything shared.
    env.update(LOG_DIR=str(tmp / "logs"), DATA_DIR=str(tmp / "data"), ARCHIVE_URL=str(tmp / "archive"),
               METRICS_PORT="0", ZMQ_PULL=f"ipc://{tmp}/pull", ZMQ_PUSH=f"ipc://{tmp}/push", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def trap():
    """A listening socket; ingest with a bad setting must exit before it connects to it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


@pytest.fixture(scope="module")
def results(tmp_path_factory, trap):
    """Runs every case at once; {id: (exit status, output, seconds)}."""
    trap_url = f"ws://127.0.0.1:{trap.getsockname()[1]}"
    started = {}
    for case, (args, extra, _) in CASES.items():
        tmp = tmp_path_factory.mktemp(case)
        argv = [trap_url if arg == TRAP_URL else arg for arg in args]
        process = subprocess.Popen([sys.executable, "-m", "stages.cli", *argv], cwd=REPO, env=_environment(tmp, extra),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started[case] = (process, time.monotonic())
    done = {}
    deadline = time.monotonic() + TIMEOUT_SECS
    for case, (process, t0) in started.items():
        try:
            output, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            done[case] = (None, output.decode(errors="replace"), None)
            continue
        done[case] = (process.returncode, output.decode(errors="replace"), time.monotonic() - t0)
    return done


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_error_is_one_line_naming_the_variable_and_exit_status_2(results, case):
    status, output, _ = results[case]
    variable = CASES[case][2]
    assert status is not None, f"still running after {TIMEOUT_SECS}s (the bad value was accepted): {output!r}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 2, output
    assert len(lines) == 1, output
    assert variable in lines[0], output
    assert "Traceback" not in output


def test_ingest_validates_before_it_connects_anywhere(results, trap):
    for case in ("ingest-unparsable-symbol", "ingest-bad-number"):
        assert results[case][0] == 2, results[case]
    try:
        connection, _ = trap.accept()
    except BlockingIOError:
        return
    connection.close()
    pytest.fail(f"an ingest with a bad setting connected to {trap.getsockname()}")


# -- the same contract in-process, for the rest of the table (cheap: no interpreter start-up)

class _StageStarted(Exception):
    """Raised where a stage would start working: a bad value got through validation."""


IN_PROCESS = {
    "ingest-initial-delay-equals-timeout": (["ingest", "--symbols", "btcusdt"], {"WS_INITIAL_RETRY_DELAY_SECS": "30"}, "WS_INITIAL_RETRY_DELAY_SECS"),
    "ingest-max-delay-below-initial": (["ingest", "--symbols", "btcusdt", "--ws-max-retry-delay-secs", "0.5"], {}, "WS_MAX_RETRY_DELAY_SECS"),
    "ingest-timeout-below-batch-by-options": (["ingest", "--symbols", "btcusdt", "--batch-interval", "10", "--ws-message-timeout-secs", "9.99"], {}, "WS_MESSAGE_TIMEOUT_SECS"),
    "ingest-flag": (["ingest", "--symbols", "btcusdt"], {"VERIFY_BOOK_CHECKSUM": "maybe"}, "VERIFY_BOOK_CHECKSUM"),
    "ingest-unknown-exchange-option": (["ingest", "--exchange", "foo", "--symbols", "btcusdt"], {}, "EXCHANGE"),
    "ingest-unknown-feed-env": (["ingest", "--symbols", "btcusdt"], {"FEEDS": "ticker"}, "FEEDS"),
    "ingest-empty-feeds": (["ingest", "--symbols", "btcusdt", "--feeds", ","], {}, "FEEDS"),
    "ingest-symbol-without-quote": (["ingest"], {"SYMBOLS": "XYZ"}, "SYMBOLS"),
    "ingest-no-symbol": (["ingest", "--exchange", "okx"], {}, "SYMBOLS"),
    "check-log-level": (["check", "--log-level", "verbose"], {}, "LOG_LEVEL"),
    "check-hwm-malformed": (["check", "--hwm", "1k"], {}, "ZMQ_HWM"),
    "persist-nan-batch": (["persist"], {"BATCH_INTERVAL": "nan"}, "BATCH_INTERVAL"),
    "persist-archive-interval-86401": (["persist", "--archive-interval-secs", "86401"], {}, "ARCHIVE_INTERVAL_SECS"),
    "persist-archive-interval-zero": (["persist"], {"ARCHIVE_INTERVAL_SECS": "0"}, "ARCHIVE_INTERVAL_SECS"),
    "persist-seal-on-exit-flag": (["persist", "--seal-on-exit", "sometimes"], {}, "SEAL_ON_EXIT"),
}


@pytest.mark.parametrize("case", list(IN_PROCESS))
def test_config_errors_in_process(case, monkeypatch, capsys, tmp_path):
    from stages import cli

    args, extra, variable = IN_PROCESS[case]
    for name, value in _environment(tmp_path, extra).items():
        monkeypatch.setenv(name, value)
    for name in SETTINGS:
        if name not in extra and name not in ("LOG_DIR", "DATA_DIR", "ARCHIVE_URL", "METRICS_PORT", "ZMQ_PULL", "ZMQ_PUSH"):
            monkeypatch.delenv(name, raising=False)

    def started(*_args, **_kwargs):
        raise _StageStarted(case)

    monkeypatch.setattr("pipeline.logs.setup", started)
    monkeypatch.setattr("signal.signal", lambda *_args: None)  # stages set their handlers first: not in pytest's process
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert exit_info.value.code == 2
    assert len(lines) == 1 and variable in lines[0], lines
