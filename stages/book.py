"""book: rebuilds one stream's L2 order book from the archive at sample times (Parquet or CSV).

    collector book --exchange okx --symbol BTC-USDT --from 2026-11-25T14:00:00Z --to 2026-11-25T15:00:00Z \\
                   --every 1 --depth 10 --output book.parquet

Times are ISO-8601 (``2026-11-25T14:00:00Z``) or integer microseconds. The rules (exchange order,
when the book is unknown) are ``pipeline.books``'s.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import duckdb

from pipeline import archive_views
from pipeline import config as cfg

EXCHANGES = tuple(archive_views.BOOK_FIELDS)


def _time(option: str, text: str | None) -> int | None:
    from pipeline.books import to_us

    if text is None:
        return None
    try:
        return to_us(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _write(table, output: str) -> None:
    """Writes to a temporary name beside the target, then renames: a reader never sees half a file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    target = Path(output)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if target.suffix.lower() == ".parquet":
            pq.write_table(table, temporary, compression="zstd")
        else:
            pacsv.write_csv(table, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@click.command()
@click.option("--exchange", "-e", required=True, type=click.Choice(EXCHANGES, case_sensitive=False), help="the exchange")
@click.option("--symbol", "-s", required=True, help="the symbol, in the exchange's form or a common spelling (BTC/USDT)")
@click.option("--from", "start", default=None, metavar="T1", help="first sample time: ISO-8601 or μs (required with --every)")
@click.option("--to", "end", default=None, metavar="T2", help="last sample time: ISO-8601 or μs (required with --every)")
@click.option("--every", "every", type=float, default=None, metavar="SECONDS", help="sample every SECONDS from --from to --to")
@click.option("--at", "at", default=None, metavar="T", help="one sample at T instead")
@click.option("--depth", "-d", type=click.IntRange(1, 1000), default=10, show_default=True, help="levels per side")
@click.option("--output", "-o", required=True, metavar="FILE", help="FILE.parquet or FILE.csv")
@cfg.options("BUCKET_NAME", "ARCHIVE_URL", "AWS_REGION", "S3_ENDPOINT_URL", "VERIFY_BOOK_CHECKSUM")
def command(exchange: str, symbol: str, start: str | None, end: str | None, every: float | None, at: str | None,
            depth: int, output: str, **raw: str | None) -> None:
    """Rebuilds the L2 order book of one stream from the archive at sample times."""
    if (every is None) == (at is None):
        raise click.UsageError("give exactly one of --every SECONDS or --at T")
    start_us, end_us, at_us = _time("--from", start), _time("--to", end), _time("--at", at)
    every_us = None
    if every is not None:
        if start_us is None or end_us is None:
            raise click.UsageError("--every needs --from and --to")
        if not 1 <= every * 1e6 < float("inf"):
            raise click.BadParameter(f"must be at least one microsecond, got {every}", param_hint="--every")
        every_us = round(every * 1_000_000)
    if start_us is not None and end_us is not None and start_us > end_us:
        raise click.BadParameter("is after --to", param_hint="--from")
    if at_us is not None and ((start_us is not None and at_us < start_us) or (end_us is not None and at_us > end_us)):
        raise click.BadParameter("is outside --from .. --to", param_hint="--at")
    if Path(output).suffix.lower() not in (".parquet", ".csv"):
        raise click.BadParameter("must end in .parquet or .csv", param_hint="--output")
    if not Path(output).resolve().parent.is_dir():
        raise click.BadParameter(f"folder {Path(output).resolve().parent} does not exist", param_hint="--output")
    conf = cfg.load(raw)
    if not conf.bucket_name and not Path(conf.archive_url).is_dir():
        raise cfg.ConfigError("ARCHIVE_URL", f"no archive folder at {conf.archive_url}")

    from loguru import logger

    from pipeline.books import replay

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")
    try:
        con = archive_views.connect(conf.bucket_name, conf.archive_url, conf.aws_region, conf.s3_endpoint_url)
        con.execute("SET enable_progress_bar = false")  # stderr carries warnings and errors only
        table = replay(con, exchange.lower(), symbol, start_us, end_us, every_us=every_us, at_us=at_us, depth=depth,
                       verify_checksum=conf.verify_book_checksum)
    except ValueError as exc:  # arguments replay refuses (e.g. too many samples)
        raise click.UsageError(str(exc)) from None
    except (duckdb.Error, OSError) as exc:
        click.echo(f"book failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        sys.exit(1)
    if not int((table.schema.metadata or {}).get(b"messages", b"0")):
        click.echo(f"warning: the archive holds no order-book rows of {exchange.lower()} {symbol} up to the last sample", err=True)
    _write(table, output)
    valid = table.column("valid").to_pylist().count(True)
    meta = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
    click.echo(f"wrote {table.num_rows} rows ({valid} valid) to {output}; {meta['messages']} messages read, "
               f"{meta['checksum_failures']} checksum failures, {meta['chain_breaks']} chain breaks")
