"""status: one table over every stage's /health; exits 1 if any stage is unhealthy or unreachable."""
from __future__ import annotations

import sys
import urllib.request

import click
import orjson

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


@click.command()
@click.option("--endpoints", envvar="COLLECTOR_ENDPOINTS", default="",
              help="name=url,... of the stages' metrics servers [default: the pipeline topology's]")
@click.option("--timeout", default=2.0, show_default=True, help="seconds to wait for each stage")
def command(endpoints: str, timeout: float) -> None:
    """Asks every stage's /health and prints one table; non-zero exit if any is unhealthy."""
    if endpoints:
        targets = dict(part.split("=", 1) for part in endpoints.split(",") if "=" in part)
    else:
        targets = topology.health_endpoints()
    reports = {name: fetch(url.rstrip("/"), timeout) for name, url in targets.items()}
    click.echo(table([row(name, report) for name, report in reports.items()]))
    bad = [name for name, report in reports.items() if report is None or report.get("status") == "unhealthy"]
    sys.exit(1 if bad else 0)
