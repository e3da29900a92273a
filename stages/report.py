"""report: a self-contained HTML data-quality report (and its figures as JSON) over the archive."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import duckdb
import orjson

from pipeline import archive_views, report
from pipeline import config as cfg


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return report.parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _write(path: str, content: bytes) -> None:
    """Temp name, then rename: a reader never sees half a report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, target)


@click.command()
@cfg.options("BUCKET_NAME", "ARCHIVE_URL", "AWS_REGION", "S3_ENDPOINT_URL")
@click.option("--from", "start", callback=_time, help="start of the period (ISO-8601, UTC unless an offset is given; default: the first record)")
@click.option("--to", "end", callback=_time, help="end of the period, inclusive (default: the last record)")
@click.option("--exchange", callback=_list, help="only these exchanges (comma separated)")
@click.option("--symbol", callback=_list, help="only these symbols (comma separated; BTC/USDT matches btcusdt, BTCUSDT, BTC-USDT)")
@click.option("--output", "-o", required=True, help="the HTML file to write")
@click.option("--json", "json_path", default=None, help="also write the summary table's figures as JSON to this file")
def command(start: int | None, end: int | None, exchange: tuple[str, ...], symbol: tuple[str, ...], output: str,
            json_path: str | None, **raw: str | None) -> None:
    """A self-contained data-quality report: coverage, gaps, outages, rates and latency per stream."""
    conf = cfg.load(raw)
    if start is not None and end is not None and end < start:
        raise click.BadParameter("--to is before --from", param_hint="--to")
    began = time.monotonic()
    fs, root, prefix = archive_views.archive_location(conf.bucket_name, conf.archive_url, conf.aws_region, conf.s3_endpoint_url)
    data_files, _ = archive_views.list_files(fs, root)
    files = [f for f in (report.ArchiveFile.from_key(path[len(root.rstrip("/")) + 1:]) for path in data_files) if f]
    con = archive_views.connect(conf.bucket_name, conf.archive_url, conf.aws_region, conf.s3_endpoint_url)
    location = f"s3://{conf.bucket_name}" if conf.bucket_name else str(Path(root).resolve())
    selection = report.Selection(tuple(e.lower() for e in exchange), symbol, start, end)
    try:
        result = report.collect(con, selection, files, archive=location)
    except duckdb.Error as exc:
        click.echo(f"report failed: {str(exc).splitlines()[0]}", err=True)
        sys.exit(1)
    _write(output, report.render_html(result).encode())
    if json_path:
        _write(json_path, orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    summary = result.to_json()
    click.echo(f"wrote {output}" + (f" and {json_path}" if json_path else "") + f": {summary['totals']['streams']} streams, "
               f"{summary['totals']['records']:,} records, verdict {summary['verdict']} ({time.monotonic() - began:.1f} s)")
