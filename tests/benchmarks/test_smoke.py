"""The benchmark suite must keep working: ``python -m benchmarks.run --quick`` as a user runs it.

No timing is asserted (the machine is shared and small); only that every figure is measured and
printed, and that nothing failed on the way.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.run import expected_row_keys
from tests.conftest import REPO


@pytest.mark.timeout(900)
def test_quick_suite_prints_the_table_with_every_row_and_no_error(tmp_path):
    saved = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(saved)],
        cwd=REPO, capture_output=True, timeout=840,
    )
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]

    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "cores" in lines[0]
    assert lines[2].startswith("code: ")
    for package in ("python", "pyzmq", "websocket-client", "duckdb", "pyarrow", "orjson"):
        assert f"{package} " in lines[1], lines[1]

    results = json.loads(saved.read_text())
    rows = {row["key"]: row for row in results["table"]}
    assert sorted(rows) == sorted(expected_row_keys())
    for key, row in rows.items():
        assert row["figure"] in out, key  # printed
        assert row["value"] and "n/a" not in row["value"], (key, row)  # measured

    for feed in ("trades", "books"):
        for run in results["e2e"][feed]["unthrottled"]:
            assert run["errors"] == [], run["errors"]
            assert run["stop"]["ingest_exit"] == run["stop"]["check_exit"] == run["stop"]["persist_exit"] == 0
            # everything committed was sealed, each key once
            assert run["outbox"]["rows"] == run["outbox"]["distinct_keys"] == run["stop"]["final"]["persist"]["committed"]
    for runs in list(results["ceiling"]["ws"].values()) + list(results["ceiling"]["zmq"].values()):
        assert all("error" not in r for r in runs), runs
    for micro in results["micro"]:
        assert micro["persist"]["archive"]["verified"] == micro["persist"]["archive"]["files"]
        for exchange, kinds in micro["parse"].items():
            for kind, figures in kinds.items():
                assert figures["errors"] == 0, (exchange, kind, figures)
