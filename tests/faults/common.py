"""Helpers shared by the fault scenarios: figures reports, RSS sampling, archive + DuckDB reading."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import duckdb
import orjson

from pipeline import archive_views
from tests.conftest import REPO

REPORT_DEFAULT = REPO / "benchmarks" / "results" / "faults.json"


def write_report(section: str, figures: object) -> Path:
    """Merges ``figures`` under ``section`` into the JSON report (env ``FAULTS_REPORT``)."""
    path = Path(os.environ.get("FAULTS_REPORT", REPORT_DEFAULT))
    path.parent.mkdir(parents=True, exist_ok=True)
    report = orjson.loads(path.read_bytes()) if path.exists() and path.stat().st_size else {}
    report[section] = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "figures": figures}
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


def get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return orjson.loads(response.read())


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table for the test output."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def stored_rows(archive_dir: Path, duckdb_file: Path | None, sql_snapshots: str, sql_gaps: str | None = None):
    """(rows of ``sql_snapshots`` over archive ∪ DuckDB snapshots, rows of ``sql_gaps`` over both gap logs).

    Both queries read a relation named ``allrows`` (snapshots) / ``allgaps`` (gaps) that unions the
    archive's Parquet files with what the stopped persist left in its DuckDB file, each row tagged
    with ``src`` ('archive' or 'duckdb').
    """
    con = archive_views.connect(archive_url=str(archive_dir))
    if duckdb_file is not None and duckdb_file.exists():
        con.execute(f"ATTACH '{duckdb_file}' AS live (READ_ONLY)")
        con.execute("CREATE TEMP VIEW allrows AS SELECT *, 'archive' AS src FROM snapshots "
                    "UNION ALL SELECT *, 'duckdb' AS src FROM live.snapshots")
        con.execute("CREATE TEMP VIEW allgaps AS SELECT *, 'archive' AS src FROM gaps "
                    "UNION ALL SELECT *, 'duckdb' AS src FROM live.gaps")
    else:
        con.execute("CREATE TEMP VIEW allrows AS SELECT *, 'archive' AS src FROM snapshots")
        con.execute("CREATE TEMP VIEW allgaps AS SELECT *, 'archive' AS src FROM gaps")
    try:
        snapshots = con.execute(sql_snapshots).fetchall()
        gaps = con.execute(sql_gaps).fetchall() if sql_gaps else []
    finally:
        con.close()
    return snapshots, gaps


def missing_ids(ids: list[int]) -> list[int]:
    """Ids absent between the smallest and the largest of ``ids`` (a contiguous feed's losses)."""
    present = sorted(set(ids))
    missing: list[int] = []
    for a, b in zip(present, present[1:]):
        missing.extend(range(a + 1, b))
    return missing


COUNTING_KINDS = "('gap', 'disconnect', 'lost')"  # gap-log rows that name missing ids (SQL)


def counted_by_gap_rows(missing: list[int], gap_rows: list[tuple[str, str | None, int | None]]) -> set[int]:
    """The missing ids of a contiguous feed that some gap-log row (kind, expected, missing) names: a
    ``gap`` row or an outage (``disconnect``) row whose writer knew the ids (``expected`` = the first
    missing), or a ``lost`` row of persist (``expected`` = the id received before the loss)."""
    covered: set[int] = set()
    for kind, expected, count in gap_rows:
        if expected is None or count is None:
            continue
        start = int(expected) + (kind == "lost")
        covered.update(range(start, start + int(count)))
    return {m for m in missing if m in covered}


def duckdb_connect_readonly(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), read_only=True)
