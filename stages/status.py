"""status: one table over every stage's /health; exits 1 if any stage is unhealthy or unreachable."""
from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import click
import orjson

from pipeline import config as cfg
from pipeline import topology

COLUMNS = ("stage", "pid", "status", "reason", "uptime", "rec/s", "drops", "gaps", "oldest stream")


def fetch(url: str, timeout: float) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as response:
            return orjson.loads(response.read())
    except (OSError, ValueError):
        return None


def row(name: str, report: dict | None) -> tuple[str, ...]:
    if report is None:
        return (name, "-", "unreachable", "no answer on /health", "-", "-", "-", "-", "-")
    ages = report.get("stream_age_seconds") or {}
    oldest = max(ages.items(), key=lambda item: item[1]) if ages else None
    return (
        name,
        str(report.get("pid", "-")),
        report.get("status", "?"),
        report.get("degraded_reason") or "",
        f"{report.get('uptime_seconds', 0)}s",
        f"{report.get('records_per_second', 0):.0f}",
        str(report.get("messages_dropped", 0)),
        str(report.get("gaps", "-")),
        f"{oldest[0]} {oldest[1]:.0f}s" if oldest else "-",
    )


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows + [COLUMNS]) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in [COLUMNS] + rows]
    return "\n".join(lines)


def targets(endpoints: str, data_dir: str) -> dict[str, str]:
    """``--endpoints`` if given, else the stages ``collector run`` started, else the default topology."""
    if endpoints:
        return dict(part.split("=", 1) for part in endpoints.split(",") if "=" in part)
    written = Path(data_dir) / "run" / "stages.json"
    if written.exists():
        return orjson.loads(written.read_bytes())
    return topology.health_endpoints()


@click.command()
@cfg.options("DATA_DIR")
@click.option("--endpoints", envvar="COLLECTOR_ENDPOINTS", default="",
              help="name=url,... of the stages' metrics servers [default: those `collector run` started]")
@click.option("--timeout", default=2.0, show_default=True, help="seconds to wait for each stage")
def command(endpoints: str, timeout: float, **raw: str | None) -> None:
    """Asks every stage's /health and prints one table; non-zero exit if any is unhealthy."""
    conf = cfg.load(raw)
    targets_by_name = targets(endpoints, conf.data_dir)
    reports = {name: fetch(url.rstrip("/"), timeout) for name, url in targets_by_name.items()}
    click.echo(table([row(name, report) for name, report in reports.items()]))
    bad = [name for name, report in reports.items() if report is None or report.get("status") == "unhealthy"]
    sys.exit(1 if bad else 0)
