"""query: DuckDB SQL over the archive, with the views snapshots, gaps, trades and books."""
from __future__ import annotations

import sys
from pathlib import Path

import click
import duckdb

from pipeline import archive_views
from pipeline import config as cfg


def write(con: duckdb.DuckDBPyConnection, sql: str, output: str) -> None:
    suffix = Path(output).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise click.BadParameter("the output must end in .csv or .parquet", param_hint="--output")
    options = "FORMAT parquet, COMPRESSION zstd" if suffix == ".parquet" else "FORMAT csv, HEADER"
    con.execute(f"COPY ({sql}) TO '{output.replace(chr(39), chr(39) * 2)}' ({options})")


@click.command()
@click.argument("sql")
@cfg.options("BUCKET_NAME", "ARCHIVE_URL", "AWS_REGION", "S3_ENDPOINT_URL")
@click.option("--output", "-o", default="", help="write the result to FILE.csv or FILE.parquet instead of printing it")
@click.option("--max-rows", default=40, show_default=True, help="rows printed at most")
def command(sql: str, output: str, max_rows: int, **raw: str | None) -> None:
    """Runs SQL over the archive: views snapshots, gaps, trades, books."""
    conf = cfg.load(raw)
    con = archive_views.connect(conf.bucket_name, conf.archive_url, conf.aws_region, conf.s3_endpoint_url)
    try:
        if output:
            write(con, sql.rstrip().rstrip(";"), output)
            click.echo(f"wrote {output}")
        else:
            con.sql(sql).show(max_rows=max_rows, max_width=200)
    except duckdb.Error as exc:
        click.echo(f"query failed: {str(exc).splitlines()[0]}", err=True)
        sys.exit(1)
