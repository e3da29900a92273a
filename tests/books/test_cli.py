"""``collector book`` through the real command line: Parquet and CSV files equal to ``replay``;
bad arguments end in one line and exit status 2."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest

from pipeline.books import replay
from tests.books.helpers import T0, T0_ISO, gap, row, write_archive
from tests.conftest import REPO, fixture_lines

STEP = 100_000


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    rows, gaps = [], []
    frames = [line for line in fixture_lines("okx/books.jsonl") if orjson.loads(line)["arg"]["instId"] == "BTC-USDT"]
    for i, frame in enumerate(frames):
        ts = int(orjson.loads(frame)["data"][0]["ts"]) * 1000
        rows.append(row("okx", "BTC-USDT", f"{ts}-{i:08x}", T0 + (i + 1) * STEP, frame, ts))
    gaps.append(gap("disconnect", "okx", "BTC-USDT", T0 + 3_000_000, T0 + 3_500_000))
    return write_archive(tmp_path_factory.mktemp("books") / "archive", rows, gaps)


def run(archive, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BUCKET_NAME", "ARCHIVE_URL", "VERIFY_BOOK_CHECKSUM")}
    env["ARCHIVE_URL"] = str(archive)
    return subprocess.run([sys.executable, "-m", "stages.cli", "book", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_parquet_output_equals_replay(archive, tmp_path):
    out = tmp_path / "book.parquet"
    result = run(archive, "--exchange", "okx", "--symbol", "BTC-USDT", "--from", T0_ISO, "--to", "2026-11-25T14:00:06Z",
                 "--every", "0.25", "--depth", "5", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote 25 rows" in result.stdout
    table = pq.read_table(out)
    expected = replay(archive, "okx", "BTC-USDT", T0, T0 + 6_000_000, every_us=250_000, depth=5)
    assert table.equals(expected)
    assert table.schema.metadata[b"checksum_failures"] == b"0"
    valid = table.column("valid").to_pylist()
    times = table.column("timestamp").to_pylist()
    # after the disconnect the book stays unknown: the recorded stream has no later snapshot
    assert [v for ts, v in zip(times, valid) if ts >= T0 + 3_000_000] == [False] * 13
    assert valid[1:12] == [True] * 11


def test_csv_output_equals_replay(archive, tmp_path):
    out = tmp_path / "book.csv"
    at = T0 + 2_050_000
    result = run(archive, "--exchange", "OKX", "--symbol", "btc-usdt", "--from", str(T0), "--to", str(T0 + 6_000_000),
                 "--at", str(at), "--depth", "3", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        (line,) = list(csv.DictReader(handle))
    (expected,) = replay(archive, "okx", "BTC-USDT", at_us=at, depth=3).to_pylist()
    assert int(line["timestamp"]) == at and line["exchange"] == "okx" and line["symbol"] == "BTC-USDT"
    assert line["valid"] == "true" and line["exchange_sequence_id"] == expected["exchange_sequence_id"]
    for key, value in expected.items():
        if "_price_" in key or "_size_" in key:
            assert float(line[key]) == value, key


def test_csv_invalid_samples_have_empty_levels(archive, tmp_path):
    out = tmp_path / "early.csv"
    result = run(archive, "--exchange", "okx", "--symbol", "BTC-USDT", "--from", T0_ISO, "--to", T0_ISO,
                 "--every", "1", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        (line,) = list(csv.DictReader(handle))
    assert line["valid"] == "false" and line["bid_price_0"] == "" and line["ask_size_9"] == ""


@pytest.mark.parametrize("args, words", [
    (["--every", "1", "--at", str(T0)], "exactly one of --every"),
    ([], "exactly one of --every"),
    (["--every", "0"], "--every"),
    (["--every", "1", "--from", "tomorrow"], "--from"),
    (["--every", "1", "--from", "2026-11-25T15:00:00Z"], "--from"),
    (["--at", "2026-11-26T00:00:00Z"], "--at"),
    (["--every", "1", "--output", "book.json"], "--output"),
    (["--every", "1", "--depth", "0"], "--depth"),
    (["--every", "1", "--exchange", "kraken"], "--exchange"),
    (["--every", "0.000001"], "samples"),
])
def test_bad_arguments_one_line_exit_2(archive, tmp_path, args, words):
    base = {"--exchange": "okx", "--symbol": "BTC-USDT", "--from": T0_ISO, "--to": "2026-11-25T14:10:00Z",
            "--output": str(tmp_path / "x.parquet")}
    given = dict(zip(args[::2], args[1::2]))
    argv = [item for key, value in {**base, **given}.items() for item in (key, value)]
    result = run(archive, *argv)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1 and words in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "x.parquet").exists()


def test_a_missing_archive_folder_is_a_config_error(tmp_path):
    result = run(tmp_path / "nowhere", "--exchange", "okx", "--symbol", "BTC-USDT", "--at", str(T0),
                 "--output", str(tmp_path / "x.csv"))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and len(output.splitlines()) == 1 and "ARCHIVE_URL" in output, output
