"""DuckDB views over the Parquet archive (a local folder or an S3 bucket), for researchers and tools.

    snapshots  every archived record (the SPEC columns)
    gaps       the gap log: gap, disconnect and resync intervals
    trades     typed trades of all five exchanges: price, quantity, side (the taker's), trade_id
    books      top of book (best bid/ask price and size) from every message that carries a whole book
               (snapshot feeds, and the snapshots of delta feeds); ``collector book`` rebuilds deltas

S3 goes through s3fs registered with DuckDB, because DuckDB's httpfs extension cannot be downloaded
everywhere. Files are listed once, when the views are made.
"""
from __future__ import annotations

import duckdb
import fsspec

SNAPSHOT_COLUMNS = ("exchange VARCHAR, symbol VARCHAR, data_type VARCHAR, exchange_sequence_id VARCHAR, "
                    "timestamp_collector BIGINT, timestamp_exchange BIGINT, data VARCHAR")
GAP_COLUMNS = ("kind VARCHAR, exchange VARCHAR, symbol VARCHAR, data_type VARCHAR, expected VARCHAR, "
               "received VARCHAR, missing BIGINT, start_time BIGINT, end_time BIGINT")


def _j(path: str) -> str:
    return f"json_extract_string(data, '{path}')"


# Per exchange: (price, quantity, taker side) of one trade row's ``data``.
TRADE_FIELDS = {
    "binance": (_j("$.data.p"), _j("$.data.q"), f"CASE WHEN {_j('$.data.m')} = 'true' THEN 'sell' ELSE 'buy' END"),
    # Coinbase's side is the maker's: the taker took the other side
    "coinbase": (_j("$.price"), _j("$.size"), f"CASE WHEN {_j('$.side')} = 'sell' THEN 'buy' ELSE 'sell' END"),
    "upbit": (_j("$.tp"), _j("$.tv"), f"CASE WHEN {_j('$.ab')} = 'ASK' THEN 'sell' ELSE 'buy' END"),
    "okx": (_j("$.px"), _j("$.sz"), f"lower({_j('$.side')})"),
    "bybit": (_j("$.p"), _j("$.v"), f"lower({_j('$.S')})"),
}

# Per exchange: (best bid price, bid size, best ask price, ask size, condition that the row is a whole book).
BOOK_FIELDS = {
    "binance": (_j("$.data.bids[0][0]"), _j("$.data.bids[0][1]"), _j("$.data.asks[0][0]"), _j("$.data.asks[0][1]"), "true"),
    "coinbase": (_j("$.bids[0][0]"), _j("$.bids[0][1]"), _j("$.asks[0][0]"), _j("$.asks[0][1]"), f"{_j('$.type')} = 'snapshot'"),
    "upbit": (_j("$.obu[0].bp"), _j("$.obu[0].bs"), _j("$.obu[0].ap"), _j("$.obu[0].as"), "true"),
    "okx": (_j("$.data[0].bids[0][0]"), _j("$.data[0].bids[0][1]"), _j("$.data[0].asks[0][0]"), _j("$.data[0].asks[0][1]"),
            f"coalesce({_j('$.action')}, 'snapshot') = 'snapshot'"),
    "bybit": (_j("$.data.b[0][0]"), _j("$.data.b[0][1]"), _j("$.data.a[0][0]"), _j("$.data.a[0][1]"), f"{_j('$.type')} = 'snapshot'"),
}


def _case(index: int, fields: dict, cast: str | None = "DOUBLE") -> str:
    branches = " ".join(f"WHEN '{exchange}' THEN {columns[index]}" for exchange, columns in fields.items())
    expression = f"CASE exchange {branches} END"
    return f"TRY_CAST({expression} AS {cast})" if cast else expression


TRADES_VIEW = f"""CREATE OR REPLACE VIEW trades AS
SELECT exchange, symbol, timestamp_collector, timestamp_exchange, exchange_sequence_id AS trade_id,
       {_case(0, TRADE_FIELDS)} AS price, {_case(1, TRADE_FIELDS)} AS quantity, {_case(2, TRADE_FIELDS, None)} AS side
FROM snapshots WHERE data_type = 'trade'"""

BOOKS_VIEW = f"""CREATE OR REPLACE VIEW books AS
SELECT exchange, symbol, timestamp_collector, timestamp_exchange, exchange_sequence_id,
       {_case(0, BOOK_FIELDS)} AS bid_price, {_case(1, BOOK_FIELDS)} AS bid_size,
       {_case(2, BOOK_FIELDS)} AS ask_price, {_case(3, BOOK_FIELDS)} AS ask_size
FROM snapshots WHERE data_type = 'orderbook' AND {_case(4, BOOK_FIELDS, 'BOOLEAN')}"""


def archive_location(bucket: str, archive_url: str, region: str = "us-east-1", endpoint_url: str = "") -> tuple[fsspec.AbstractFileSystem, str, str]:
    """(filesystem, root path on it, URL prefix DuckDB reads it by)."""
    if bucket:
        import s3fs

        client_kwargs = {"region_name": region}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
        fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True)
        return fs, bucket, "s3://"
    fs = fsspec.filesystem("file")
    return fs, fs._strip_protocol(archive_url), ""


def list_files(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[str], list[str]]:
    """(data files, gap files) under the archive root."""
    if not fs.exists(root):
        return [], []
    found = sorted(path for path in fs.find(root) if path.endswith(".parquet"))
    gaps_prefix = root.rstrip("/") + "/gaps/"
    return [p for p in found if not p.startswith(gaps_prefix)], [p for p in found if p.startswith(gaps_prefix)]


def _source(files: list[str], prefix: str, columns: str) -> str:
    if not files:
        return f"SELECT * FROM (SELECT {', '.join('NULL::' + c.split()[1] + ' AS ' + c.split()[0] for c in columns.split(', '))}) WHERE false"
    listed = ", ".join("'" + (prefix + f).replace("'", "''") + "'" for f in files)
    return f"SELECT * FROM read_parquet([{listed}], union_by_name = true)"


def connect(bucket: str = "", archive_url: str = "./archive", region: str = "us-east-1", endpoint_url: str = "",
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the archive's views."""
    fs, root, prefix = archive_location(bucket, archive_url, region, endpoint_url)
    con = con or duckdb.connect()
    if prefix:
        con.register_filesystem(fs)
    data_files, gap_files = list_files(fs, root)
    con.execute(f"CREATE OR REPLACE VIEW snapshots AS {_source(data_files, prefix, SNAPSHOT_COLUMNS)}")
    con.execute(f"CREATE OR REPLACE VIEW gaps AS {_source(gap_files, prefix, GAP_COLUMNS)}")
    con.execute(TRADES_VIEW)
    con.execute(BOOKS_VIEW)
    return con
