"""The data-quality report: per-stream figures aggregated in DuckDB, plots, one self-contained HTML file.

Everything heavy is SQL over the archive views (``pipeline.archive_views``): the rows are never
loaded into Python. Three scans of ``snapshots`` read only the small columns (never ``data``):

    1. per stream and 5-second bucket: rows, first and last receipt time  -> ``report_buckets``
       (records, first/last, silences, messages per second, rows per day all come from this table)
    2. per stream: a histogram of latency (0.1 ms bins) -> p50/p99 of the period
    3. per stream and plot step: exact latency p50/p99 (``quantile_cont``), a week of rows at a time

and the gap log (``gaps``) is small enough to read whole for the period.

Definitions (also printed at the foot of the report):

- period: ``--from``..``--to`` (both inclusive); each one left out is the first / last time of any
  record or gap-log row of the selected streams.
- silence: time a stream received nothing for longer than its feed's normal cadence (the
  ``cadence_secs`` after which ingest calls the stream stale), including the stretch from the period's
  start to the first record and from the last record to the period's end, less the time a gap,
  outage or resync row explains (what is left must still be longer than the cadence).
- gaps: the gap log's ``gap`` rows (ids the exchange skipped) and ``lost`` rows (records lost inside
  the pipeline), with their ``missing`` counts.
- coverage: the share of the period covered by none of the stream's gap, outage (``disconnect``),
  book-unknown (``resync``) or silent intervals. A stream with nothing wrong has coverage 1.
- verdict: the worst of: has outages > has gaps > book unknown intervals > silent intervals > complete.
- duplicates / out of order: the sum of ``missing`` over the gap log's counter rows of kind
  ``duplicate`` / ``out_of_order`` (check writes one per stream and interval when it saw any).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import html
import math
import re
import time
from typing import Iterable, Sequence

import duckdb

from pipeline import exchanges

SCHEMA_VERSION = 1
BUCKET_US = 5_000_000  # resolution of silence detection: no feed's cadence is shorter
DEFAULT_CADENCE_SECS = 60.0
PLOT_STEPS_SECS = (5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_PLOT_POINTS = 1000
FAULT_KINDS = ("gap", "disconnect", "resync")
COUNTER_KINDS = ("duplicate", "out_of_order")
VERDICTS = ("has outages", "has gaps", "book unknown intervals", "silent intervals", "complete")  # worst first
DAY_US = 86_400_000_000
LATENCY_BIN_US = 100  # summary latency quantiles: 0.1 ms bins
LATENCY_CHUNK_US = 7 * DAY_US  # per-step latency quantiles: a week of values in memory at most

# timeline colours: recorded, and each kind of interval that is not
COLOURS = {"recorded": "#2ca02c", "silence": "#b8b8b8", "gap": "#ff7f0e", "disconnect": "#d62728", "resync": "#9467bd"}
LABELS = {"recorded": "recorded", "silence": "silent", "gap": "gap", "disconnect": "outage", "resync": "book unknown"}


# -- inputs -------------------------------------------------------------------------------------------
def parse_time(text: str) -> int:
    """μs since the epoch from ISO-8601 (a date, or a date and time; UTC unless an offset is given) or μs."""
    cleaned = text.strip()
    if re.fullmatch(r"-?\d{10,}", cleaned):
        return int(cleaned)
    try:
        moment = datetime.datetime.fromisoformat(cleaned.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a time: use ISO-8601 (2024-08-09 or 2024-08-09T12:00:00Z) or μs") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(microseconds=1)


def iso(us: int | None) -> str | None:
    """``2024-08-09T00:00:00.000000Z`` (UTC, μs) or None."""
    if us is None:
        return None
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plot_time(us: int) -> str:
    """Plotly date axes show the text as given: a naive UTC time, labelled UTC on the axis."""
    return (datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M:%S.%f")


def _loose(symbol: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", symbol.upper())


def cadence_secs(exchange: str, data_type: str) -> float:
    """The longest normal silence of a feed (its ``cadence_secs``); a default for unknown feeds."""
    adapter = exchanges.REGISTRY.get(exchange)
    if adapter is not None:
        for feed in adapter.feeds.values():
            if feed.data_type == data_type:
                return max(feed.cadence_secs, BUCKET_US / 1e6)
    return DEFAULT_CADENCE_SECS


@dataclasses.dataclass(frozen=True)
class ArchiveFile:
    """A data file of the archive, as its key names it: ``{exchange}/{symbol}/[{server}/]{day}/{ts}.parquet``."""

    exchange: str
    symbol: str
    day: str

    @classmethod
    def from_key(cls, key: str) -> "ArchiveFile | None":
        parts = key.strip("/").split("/")
        if len(parts) < 4 or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", parts[-2]):
            return None
        return cls(parts[0], parts[1], parts[-2])


@dataclasses.dataclass
class Selection:
    """What the report covers: exchanges and symbols (empty: all) and the period's bounds (None: from the data)."""

    exchanges: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    start_us: int | None = None
    end_us: int | None = None

    def resolve_symbols(self, known: Iterable[str]) -> tuple[str, ...]:
        """The stored symbol names the user's spellings stand for (``BTC/USDT`` -> BTCUSDT, btcusdt, BTC-USDT)."""
        wanted = {_loose(s) for s in self.symbols}
        found = {name for name in known if name in self.symbols or _loose(name) in wanted}
        return tuple(sorted(found | set(self.symbols)))


# -- intervals ----------------------------------------------------------------------------------------
def union(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def length(intervals: Iterable[tuple[int, int]]) -> int:
    return sum(end - start for start, end in union(intervals))


def _clip(intervals: Iterable[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b >= lo and a <= hi]


def _for_display(intervals: list[tuple[int, int]], resolution: int, min_width: int) -> list[tuple[int, int]]:
    """Intervals closer than ``resolution`` merged and each at least ``min_width`` wide: visible, and few."""
    shown: list[tuple[int, int]] = []
    for start, end in union(intervals):
        end = max(end, start + min_width)
        if shown and start - shown[-1][1] <= resolution:
            shown[-1] = (shown[-1][0], max(shown[-1][1], end))
        else:
            shown.append((start, end))
    return shown


# -- the figures --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Stream:
    exchange: str
    symbol: str
    data_type: str
    records: int = 0
    first_us: int | None = None
    last_us: int | None = None
    intervals: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=lambda: {k: [] for k in (*FAULT_KINDS, "silence")})
    gaps: int = 0
    missing_ids: int = 0
    gaps_size_unknown: int = 0
    outages: int = 0
    book_unknown: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    coverage: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.exchange, self.symbol, self.data_type

    @property
    def label(self) -> str:
        return f"{self.symbol} {self.data_type}"

    @property
    def verdict(self) -> str:
        if self.outages:
            return "has outages"
        if self.gaps:
            return "has gaps"
        if self.book_unknown:
            return "book unknown intervals"
        if self.intervals["silence"]:
            return "silent intervals"
        return "complete"

    def seconds(self, kind: str) -> float:
        return length(self.intervals[kind]) / 1e6

    def summary(self) -> dict:
        """One row of the summary table; ``--json`` writes exactly these."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "data_type": self.data_type,
            "first_record": iso(self.first_us),
            "last_record": iso(self.last_us),
            "first_record_us": self.first_us,
            "last_record_us": self.last_us,
            "records": self.records,
            "coverage": round(self.coverage, 6),
            "gaps": self.gaps,
            "missing_ids": self.missing_ids,
            "gaps_size_unknown": self.gaps_size_unknown,
            "gap_seconds": round(self.seconds("gap"), 6),
            "outages": self.outages,
            "outage_seconds": round(self.seconds("disconnect"), 6),
            "book_unknown": self.book_unknown,
            "book_unknown_seconds": round(self.seconds("resync"), 6),
            "silences": len(self.intervals["silence"]),
            "silent_seconds": round(self.seconds("silence"), 6),
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "latency_p50_ms": None if self.latency_p50_ms is None else round(self.latency_p50_ms, 3),
            "latency_p99_ms": None if self.latency_p99_ms is None else round(self.latency_p99_ms, 3),
            "verdict": self.verdict,
        }


@dataclasses.dataclass
class Report:
    archive: str
    selection: Selection
    start_us: int | None
    end_us: int | None
    step_secs: int
    streams: list[Stream]
    rates: dict[tuple, list[tuple[int, float]]]  # stream key -> (bucket start μs, messages/s)
    latency: dict[tuple, list[tuple[int, float, float]]]  # stream key -> (bucket start μs, p50, p99)
    days: dict[str, list[tuple[str, int, int]]]  # exchange -> (day, rows, files)
    generated_us: int

    @property
    def exchanges(self) -> list[str]:
        return sorted({s.exchange for s in self.streams})

    def to_json(self) -> dict:
        rows = [s.summary() for s in self.streams]
        totals = {k: sum(r[k] for r in rows) for k in ("records", "gaps", "missing_ids", "gaps_size_unknown", "outages",
                                                       "book_unknown", "silences", "duplicates", "out_of_order")}
        verdicts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
        return {
            "schema": SCHEMA_VERSION,
            "generated_at": iso(self.generated_us),
            "archive": self.archive,
            "period": {"from": iso(self.start_us), "to": iso(self.end_us), "from_us": self.start_us, "to_us": self.end_us,
                       "seconds": None if self.start_us is None else (self.end_us - self.start_us) / 1e6},
            "filters": {"exchange": list(self.selection.exchanges) or None, "symbol": list(self.selection.symbols) or None},
            "verdict": next((v for v in VERDICTS if verdicts[v]), "no data"),  # nothing recorded is not complete
            "totals": {"streams": len(rows), **totals, "verdicts": verdicts},
            "streams": rows,
        }


def _in(column: str, values: Sequence[str]) -> tuple[str, list]:
    return f"{column} IN ({', '.join('?' * len(values))})", list(values)


def collect(con: duckdb.DuckDBPyConnection, selection: Selection, files: Sequence[ArchiveFile] = (), archive: str = "") -> Report:
    """Aggregates the archive behind ``con`` (views ``snapshots`` and ``gaps``) into the report's figures."""
    symbols = selection.resolve_symbols({f.symbol for f in files} | _gap_symbols(con)) if selection.symbols else ()
    conditions, params = [], []
    if selection.exchanges:
        sql, values = _in("exchange", selection.exchanges)
        conditions.append(sql)
        params += values
    if symbols:
        sql, values = _in("symbol", symbols)
        conditions.append(sql)
        params += values
    start, end = selection.start_us, selection.end_us
    record_conditions, event_conditions = list(conditions), list(conditions)
    record_params, event_params = list(params), list(params)
    if start is not None:
        record_conditions.append("timestamp_collector >= ?")
        event_conditions.append("coalesce(end_time, start_time) >= ?")
        record_params.append(start)
        event_params.append(start)
    if end is not None:
        record_conditions.append("timestamp_collector <= ?")
        event_conditions.append("start_time <= ?")
        record_params.append(end)
        event_params.append(end)
    where_records = " AND ".join(record_conditions) or "true"
    where_events = " AND ".join(event_conditions) or "true"

    # 1. one scan of the records: per stream and 5-second bucket
    con.execute(f"""CREATE OR REPLACE TEMP TABLE report_buckets AS
        SELECT exchange, symbol, data_type, timestamp_collector // {BUCKET_US} AS bucket, count(*) AS n,
               min(timestamp_collector) AS lo, max(timestamp_collector) AS hi
        FROM snapshots WHERE {where_records} GROUP BY ALL""", record_params)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE report_events AS
        SELECT DISTINCT CASE kind WHEN 'lost' THEN 'gap' ELSE kind END AS kind,  -- lost in the pipeline: a gap too
               exchange, symbol, data_type, expected, received, missing, start_time,
               coalesce(end_time, start_time) AS end_time
        FROM gaps WHERE {where_events}""", event_params)

    # the period
    lo, hi = con.execute("""SELECT least((SELECT min(lo) FROM report_buckets), (SELECT min(start_time) FROM report_events)),
                                   greatest((SELECT max(hi) FROM report_buckets), (SELECT max(end_time) FROM report_events))""").fetchone()
    start = lo if start is None else start
    end = hi if end is None else end
    if start is None or end is None or end < start:  # nothing in the selection
        start = end = None
    step = _plot_step(start, end)

    streams: dict[tuple, Stream] = {}
    for exchange, symbol, data_type, records, first, last in con.execute(
            "SELECT exchange, symbol, data_type, sum(n)::BIGINT, min(lo), max(hi) FROM report_buckets GROUP BY ALL").fetchall():
        streams[(exchange, symbol, data_type)] = Stream(exchange, symbol, data_type, records, first, last)
    for exchange, symbol, data_type, gaps, missing, unknown, outages, resyncs, duplicates, reordered in con.execute(f"""
            SELECT exchange, symbol, data_type, count(*) FILTER (kind = 'gap'), coalesce(sum(missing) FILTER (kind = 'gap'), 0),
                   count(*) FILTER (kind = 'gap' AND missing IS NULL), count(*) FILTER (kind = 'disconnect'),
                   count(*) FILTER (kind = 'resync'), coalesce(sum(missing) FILTER (kind = 'duplicate'), 0),
                   coalesce(sum(missing) FILTER (kind = 'out_of_order'), 0)
            FROM report_events WHERE kind IN ('gap', 'disconnect', 'resync', 'duplicate', 'out_of_order') GROUP BY ALL""").fetchall():
        stream = streams.setdefault((exchange, symbol, data_type), Stream(exchange, symbol, data_type))
        stream.gaps, stream.missing_ids, stream.gaps_size_unknown = gaps, int(missing), unknown
        stream.outages, stream.book_unknown = outages, resyncs
        stream.duplicates, stream.out_of_order = int(duplicates), int(reordered)

    if start is not None:
        for kind, exchange, symbol, data_type, a, b in con.execute(
                "SELECT kind, exchange, symbol, data_type, start_time, end_time FROM report_events "
                "WHERE kind IN ('gap', 'disconnect', 'resync')").fetchall():
            streams[(exchange, symbol, data_type)].intervals[kind] += _clip([(a, b)], start, end)
        _silences(con, streams, start, end)
        for stream in streams.values():
            period = end - start
            uncovered = length(interval for kind in stream.intervals for interval in stream.intervals[kind])
            stream.coverage = (period - uncovered) / period if period else float(stream.records > 0)

    rates = _rates(con, step, start, end)
    latency = _latency(con, streams, where_records, record_params, step, start, end)
    days = _days(con, files, selection.exchanges, symbols, start, end)
    ordered = sorted(streams.values(), key=lambda s: s.key)
    return Report(archive, selection, start, end, step, ordered, rates, latency, days, _now_us())


def _now_us() -> int:
    return time.time_ns() // 1000


def _gap_symbols(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute("SELECT DISTINCT symbol FROM gaps").fetchall()}


def _plot_step(start: int | None, end: int | None) -> int:
    """Seconds per point of the time plots: the smallest round step giving at most MAX_PLOT_POINTS."""
    if start is None:
        return PLOT_STEPS_SECS[0]
    seconds = (end - start) / 1e6
    return next((s for s in PLOT_STEPS_SECS if seconds / s <= MAX_PLOT_POINTS), PLOT_STEPS_SECS[-1])


def _silences(con: duckdb.DuckDBPyConnection, streams: dict[tuple, Stream], start: int, end: int) -> None:
    """Receipt-time holes longer than the feed's cadence that no gap, outage or resync explains.

    Holes are found between consecutive 5-second buckets.
    Exact: a hole longer than the bucket width cannot lie inside one bucket, so it lies between the
    last record of one non-empty bucket and the first record of the next.
    """
    cadences = [(e, d, int(cadence_secs(e, d) * 1e6)) for e, d in {(s.exchange, s.data_type) for s in streams.values()}]
    con.execute("CREATE OR REPLACE TEMP TABLE report_cadence (exchange VARCHAR, data_type VARCHAR, cadence BIGINT)")
    con.executemany("INSERT INTO report_cadence VALUES (?, ?, ?)", cadences)
    rows = con.execute("""
        SELECT exchange, symbol, data_type, previous, lo FROM (
            SELECT exchange, symbol, data_type, lo,
                   lag(hi) OVER (PARTITION BY exchange, symbol, data_type ORDER BY bucket) AS previous
            FROM report_buckets) JOIN report_cadence USING (exchange, data_type)
        WHERE lo - previous > cadence""").fetchall()
    for exchange, symbol, data_type, a, b in rows:
        streams[(exchange, symbol, data_type)].intervals["silence"].append((a, b))
    limits = {(e, d): c for e, d, c in cadences}
    for stream in streams.values():
        limit = limits[(stream.exchange, stream.data_type)]
        if stream.first_us is None:
            stream.intervals["silence"].append((start, end))
            continue
        if stream.first_us - start > limit:
            stream.intervals["silence"].append((start, stream.first_us))
        if end - stream.last_us > limit:
            stream.intervals["silence"].append((stream.last_us, end))
        # what a gap, outage or resync already explains is not silence; what is left counts if still too long
        explained = [i for kind in FAULT_KINDS for i in stream.intervals[kind]]
        left = _subtract(_clip(sorted(stream.intervals["silence"]), start, end), explained)
        stream.intervals["silence"] = [(a, b) for a, b in left if b - a > limit]


def _rates(con: duckdb.DuckDBPyConnection, step: int, start: int | None, end: int | None) -> dict[tuple, list]:
    """Messages per second per stream and plot step, zero where nothing came."""
    if start is None:
        return {}
    step_us = step * 1_000_000
    first, last = start // step_us, end // step_us
    counts: dict[tuple, dict[int, int]] = {}
    for exchange, symbol, data_type, index, n in con.execute(
            f"SELECT exchange, symbol, data_type, bucket * {BUCKET_US} // {step_us}, sum(n)::BIGINT FROM report_buckets GROUP BY ALL").fetchall():
        counts.setdefault((exchange, symbol, data_type), {})[index] = n
    return {key: [(i * step_us, per.get(i, 0) / step) for i in range(first, last + 1)] for key, per in counts.items()}


def _latency(con: duckdb.DuckDBPyConnection, streams: dict[tuple, Stream], where: str, params: list, step: int,
             start: int | None, end: int | None) -> dict[tuple, list]:
    """Exchange->collector latency p50/p99 per stream: per plot step exactly, and over the period from a histogram.

    Per step: ``quantile_cont`` (exact), a week at a time so that memory holds at most a week of values.
    Per stream: a histogram of 0.1 ms bins (bounded by the spread of latencies, not by the rows), each
    quantile given as the middle of its bin: within 0.05 ms of the exact value.
    """
    if start is None:
        return {}
    where = f"{where} AND timestamp_exchange IS NOT NULL"
    lag = "(timestamp_collector - timestamp_exchange)"
    for exchange, symbol, data_type, p50, p99 in con.execute(f"""
            WITH bins AS (SELECT exchange, symbol, data_type, floor({lag} / {LATENCY_BIN_US})::BIGINT AS bin, count(*) AS n
                          FROM snapshots WHERE {where} GROUP BY ALL),
                 running AS (SELECT *, sum(n) OVER (PARTITION BY exchange, symbol, data_type ORDER BY bin ROWS UNBOUNDED PRECEDING) AS below,
                                    sum(n) OVER (PARTITION BY exchange, symbol, data_type) AS total FROM bins)
            SELECT exchange, symbol, data_type, min(bin) FILTER (below > floor(0.5 * (total - 1))),
                   min(bin) FILTER (below > floor(0.99 * (total - 1)))
            FROM running GROUP BY ALL""", params).fetchall():
        stream = streams[(exchange, symbol, data_type)]
        stream.latency_p50_ms, stream.latency_p99_ms = ((p50 + 0.5) * LATENCY_BIN_US / 1000, (p99 + 0.5) * LATENCY_BIN_US / 1000)
    step_us = step * 1_000_000
    chunk = max(step_us, LATENCY_CHUNK_US // step_us * step_us)
    series: dict[tuple, list] = {}
    for lo in range(start - start % chunk, end + 1, chunk):
        rows = con.execute(f"""
            SELECT exchange, symbol, data_type, timestamp_collector // {step_us} AS step_index, quantile_cont({lag}, [0.5, 0.99])
            FROM snapshots WHERE {where} AND timestamp_collector >= {lo} AND timestamp_collector < {lo + chunk}
            GROUP BY ALL ORDER BY ALL""", params).fetchall()
        for exchange, symbol, data_type, index, (p50, p99) in rows:
            series.setdefault((exchange, symbol, data_type), []).append((index * step_us, p50 / 1000, p99 / 1000))
    return series


def _days(con: duckdb.DuckDBPyConnection, files: Sequence[ArchiveFile], exchanges_: Sequence[str], symbols: Sequence[str],
          start: int | None, end: int | None) -> dict[str, list[tuple[str, int, int]]]:
    """Rows (by receipt day) and files (by the day in their key) per exchange and UTC day."""
    if start is None:
        return {}
    rows: dict[tuple[str, str], int] = {}
    for exchange, day, n in con.execute(
            f"SELECT exchange, strftime(make_timestamp(bucket * {BUCKET_US} // {DAY_US} * {DAY_US}), '%Y-%m-%d'), sum(n)::BIGINT "
            "FROM report_buckets GROUP BY ALL").fetchall():
        rows[(exchange, day)] = n
    first_day, last_day = iso(start)[:10], iso(end)[:10]
    counted: dict[tuple[str, str], int] = {}
    for f in files:
        if (exchanges_ and f.exchange not in exchanges_) or (symbols and f.symbol not in symbols):
            continue
        if first_day <= f.day <= last_day:
            counted[(f.exchange, f.day)] = counted.get((f.exchange, f.day), 0) + 1
    days = [iso(start - start % DAY_US + i * DAY_US)[:10] for i in range((end // DAY_US) - (start // DAY_US) + 1)]
    out: dict[str, list] = {}
    for exchange in sorted({e for e, _ in rows} | {e for e, _ in counted}):
        out[exchange] = [(day, rows.get((exchange, day), 0), counted.get((exchange, day), 0)) for day in days]
    return out


# -- plots ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _template() -> dict:
    import plotly.io

    return plotly.io.templates["plotly_white"].to_plotly_json()


SIDE = dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02)
ABOVE = dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0)


def _figure(data: list[dict], title: str, height: int, legend: dict = SIDE, **axes) -> dict:
    """A plotly figure as plain data (plotly's figure objects cost seconds per report to validate)."""
    layout = dict(title=dict(text=title, x=0.01, font=dict(size=15)), height=height, template=_template(),
                  margin=dict(l=70, r=30, t=56, b=40), font=dict(size=12),
                  legend=legend, **axes)
    return {"data": data, "layout": layout}


def _axis(title: str | None, **more) -> dict:
    return dict(title=dict(text=title), **more) if title else dict(more)


def _timeline(report: Report, streams: list[Stream]) -> dict:
    period = report.end_us - report.start_us
    resolution, min_width = period // 1500, period // 500
    labels = [s.label for s in streams]
    segments: dict[str, tuple[list, list, list, list]] = {k: ([], [], [], []) for k in COLOURS}
    for stream in streams:
        recorded = []
        if stream.first_us is not None:
            recorded = _subtract([(max(stream.first_us, report.start_us), min(stream.last_us, report.end_us))], stream.intervals["silence"])
        pieces = {"recorded": _for_display(recorded, resolution, 0), "silence": _for_display(stream.intervals["silence"], resolution, 0)}
        for kind in FAULT_KINDS:
            pieces[kind] = _for_display(stream.intervals[kind], resolution, min_width)
        for kind, shown in pieces.items():
            ys, bases, widths, texts = segments[kind]
            for a, b in shown:
                ys.append(stream.label)
                bases.append(_plot_time(a))
                widths.append((b - a) / 1000.0)  # date axes take bar lengths in ms
                texts.append(f"{stream.exchange} {stream.label}<br>{LABELS[kind]}: {_plot_time(a)[:19]} → {_plot_time(b)[:19]} UTC")
    data = []
    for kind in ("recorded", "silence", *FAULT_KINDS):  # faults drawn last, over what was recorded
        ys, bases, widths, texts = segments[kind]
        data.append(dict(type="bar", name=LABELS[kind], orientation="h", y=ys or [labels[0]], base=bases or [_plot_time(report.start_us)],
                         x=widths or [0], marker=dict(color=COLOURS[kind], line=dict(width=0)), hovertext=texts or [""],
                         hoverinfo="text", showlegend=True))
    return _figure(data, "Coverage timeline (short intervals widened to stay visible; hover for exact times)", 110 + 34 * len(streams),
                   legend=ABOVE, barmode="overlay", bargap=0.25,
                   xaxis=_axis("time (UTC)", type="date", range=[_plot_time(report.start_us), _plot_time(report.end_us)]),
                   yaxis=dict(categoryorder="array", categoryarray=list(reversed(labels)), automargin=True))


def _subtract(intervals: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start, end in intervals:
        cursor = start
        for a, b in union(holes):
            if b <= cursor or a >= end:
                continue
            if a > cursor:
                out.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < end:
            out.append((cursor, end))
    return out


def _lines(title: str, ytitle: str, series: list[dict]) -> dict:
    """Line traces; each series: name, points [(μs, value)], colour, and optionally dash and legend (False: hidden)."""
    data = [dict(type="scatter", mode="lines", name=line["name"], legendgroup=line.get("group", line["name"]),
                 showlegend=line.get("legend", True), x=[_plot_time(t) for t, _ in line["points"]], y=[v for _, v in line["points"]],
                 line=dict(width=1.5, color=line["colour"], dash=line.get("dash", "solid"))) for line in series]
    return _figure(data, title, 360, xaxis=_axis("time (UTC)", type="date"), yaxis=_axis(ytitle, rangemode="tozero"))


def _per_day(days: list[tuple[str, int, int]]) -> dict:
    x = [d for d, _, _ in days]
    data = [dict(type="bar", name="rows", x=x, y=[r for _, r, _ in days], marker=dict(color="#1f77b4"), yaxis="y"),
            dict(type="scatter", name="files", mode="lines+markers", x=x, y=[f for _, _, f in days],
                 marker=dict(size=8, color="#ff7f0e"), yaxis="y2")]
    return _figure(data, "Rows and files archived per day", 340, legend=ABOVE, xaxis=_axis("day (UTC)", type="category"),
                   yaxis=_axis("rows per day", rangemode="tozero"),
                   yaxis2=_axis("files per day", overlaying="y", side="right", rangemode="tozero", showgrid=False, tickformat=",d"))


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def figures(report: Report) -> dict[str, list[tuple[str, dict]]]:
    """Per exchange: (div id, plotly figure) for the timeline, message rates, latency and archive per day."""
    out: dict[str, list] = {}
    step = _duration(report.step_secs)
    for exchange in report.exchanges:
        streams = [s for s in report.streams if s.exchange == exchange]
        colour = {s.key: PALETTE[i % len(PALETTE)] for i, s in enumerate(streams)}  # one colour per stream in both plots
        slug = re.sub(r"[^a-z0-9]+", "-", exchange.lower())
        rates = [dict(name=s.label, points=report.rates[s.key], colour=colour[s.key]) for s in streams if s.key in report.rates]
        latency = []
        for s in streams:
            if s.key in report.latency:
                latency.append(dict(name=s.label, group=s.label, colour=colour[s.key], points=[(t, p50) for t, p50, _ in report.latency[s.key]]))
                latency.append(dict(name=f"{s.label} p99", group=s.label, colour=colour[s.key], dash="dot", legend=False,
                                    points=[(t, p99) for t, _, p99 in report.latency[s.key]]))
        out[exchange] = [
            (f"{slug}-coverage", _timeline(report, streams)),
            (f"{slug}-rate", _lines(f"Messages per second (mean over {step})", "messages per second", rates)),
            (f"{slug}-latency", _lines(f"Exchange → collector latency: p50 solid, p99 dotted (per {step})", "latency (ms)", latency)),
            (f"{slug}-archive", _per_day(report.days.get(exchange, []))),
        ]
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "")
    if seconds < 86400:
        return f"{seconds // 3600} h" + (f" {seconds % 3600 // 60} min" if seconds % 3600 // 60 else "")
    return f"{seconds // 86400} d" + (f" {seconds % 86400 // 3600} h" if seconds % 86400 // 3600 else "")


# -- HTML ---------------------------------------------------------------------------------------------
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 24px 40px; color: #222; }}
h1 {{ font-size: 22px; margin: 18px 0 2px; }} h2 {{ font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }}
.meta, .notes {{ color: #555; }} .notes {{ font-size: 12px; max-width: 1100px; }}
.table {{ overflow-x: auto; }} table {{ border-collapse: collapse; font-size: 12.5px; }}
th, td {{ padding: 3px 6px; border-bottom: 1px solid #e4e4e4; white-space: nowrap; }}
th {{ background: #f4f4f4; text-align: left; vertical-align: bottom; white-space: normal; position: sticky; top: 0; }} td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.v-complete {{ background: #e3f4e1; }} .v-gaps, .v-book {{ background: #fff0d9; }} .v-outages {{ background: #fbe0e0; }} .v-silent {{ background: #eee; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(620px, 1fr)); gap: 8px 16px; }} .plots .wide {{ grid-column: 1 / -1; }}
</style></head><body>
<h1>{heading}</h1>
<p class="meta">{meta}</p>
<h2 id="summary">Summary</h2>
{table}
<p class="notes">{notes}</p>
{sections}
</body></html>
"""

NOTES = (
    "Times are UTC. <b>Period</b>: --from..--to (inclusive), or the first to the last record or gap-log row. "
    "<b>Coverage</b>: share of the period not inside a gap, outage, book-unknown or silent interval of the stream. "
    "<b>Gap</b>: ids skipped (from the record before to the record after); <b>missing ids</b>: their number where the feed says it. "
    "<b>Outage</b>: the connection carrying the stream was down. <b>Book unknown</b>: a delta book's chain broke until a fresh snapshot. "
    "<b>Silent</b>: nothing received for longer than the feed's normal cadence (the ingest stale limit), including before the first "
    "and after the last record, and no gap, outage or resync row explains it. <b>Duplicates / out of order</b>: as seen by check (its counter rows in the gap log). "
    "<b>Latency</b>: receipt time minus the exchange's event time, p50/p99 (to 0.1 ms in the table), rows without an exchange time left out."
)

VERDICT_CLASS = {"complete": "v-complete", "has gaps": "v-gaps", "book unknown intervals": "v-book", "has outages": "v-outages",
                 "silent intervals": "v-silent"}

COLUMNS = ("exchange", "symbol", "data type", "first record", "last record", "records", "coverage", "gaps", "missing ids",
           "outages", "book unknown", "silent", "duplicates", "out of order", "latency p50 / p99 ms", "verdict")


def _percent(fraction: float) -> str:
    """Rounded down, so nothing short of complete reads 100 %."""
    return f"{math.floor(fraction * 100_000) / 1000:.3f} %"


def _count_and_time(count: int, seconds: float) -> str:
    return f"{count:,}" + (f" ({_duration(seconds) if seconds >= 1 else f'{seconds:.3f} s'})" if count else "")


def _table(report: Report) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = []
    for s in report.streams:
        r = s.summary()
        latency = "–" if r["latency_p50_ms"] is None else f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f}"
        missing = f"{r['missing_ids']:,}" + (f" (+{r['gaps_size_unknown']} unknown)" if r["gaps_size_unknown"] else "")
        cells = [e(s.exchange), e(s.symbol), e(s.data_type), e((r["first_record"] or "–")[:19].replace("T", " ")),
                 e((r["last_record"] or "–")[:19].replace("T", " "))]
        numbers = [f"{r['records']:,}", _percent(s.coverage), f"{r['gaps']:,}", missing,
                   _count_and_time(r["outages"], r["outage_seconds"]), _count_and_time(r["book_unknown"], r["book_unknown_seconds"]),
                   _count_and_time(r["silences"], r["silent_seconds"]), f"{r['duplicates']:,}", f"{r['out_of_order']:,}", latency]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "".join(f'<td class="n">{e(c)}</td>' for c in numbers)
                    + f'<td class="{VERDICT_CLASS[r["verdict"]]}">{e(r["verdict"])}</td></tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(COLUMNS)}">no records and no gap-log rows in this selection</td></tr>')
    return f'<div class="table"><table id="summary-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def render_html(report: Report) -> str:
    """The whole report as one HTML document: plotly.js inline once, no reference to any other file or host."""
    import plotly.io

    e = html.escape
    config = {"displaylogo": False, "responsive": True}
    sections, first = [], True
    for exchange, figs in figures(report).items():
        divs = []
        for index, (div_id, fig) in enumerate(figs):
            snippet = plotly.io.to_html(fig, full_html=False, include_plotlyjs=first, div_id=div_id, config=config, validate=False)
            first = False
            divs.append(f'<div class="{"wide" if index == 0 else "plot"}">{snippet}</div>')
        sections.append(f'<section class="exchange" id="exchange-{e(exchange)}"><h2>{e(exchange)}</h2>'
                        f'<div class="plots">{"".join(divs)}</div></section>')
    if report.start_us is None:
        period = "no data in this selection"
    else:
        period = f"{iso(report.start_us)[:19].replace('T', ' ')} → {iso(report.end_us)[:19].replace('T', ' ')} UTC ({_duration((report.end_us - report.start_us) / 1e6)})"
    chosen = []
    if report.selection.exchanges:
        chosen.append("exchange " + ", ".join(report.selection.exchanges))
    if report.selection.symbols:
        chosen.append("symbol " + ", ".join(report.selection.symbols))
    meta = " · ".join([f"Period {period}", f"archive {report.archive}" if report.archive else "", *chosen,
                       f"generated {iso(report.generated_us)[:19].replace('T', ' ')} UTC"])
    title = "crypto-collector data-quality report"
    return PAGE.format(title=e(title + (f", {iso(report.start_us)[:10]}" if report.start_us is not None else "")),
                       heading=e(title), meta=e(" · ".join(p for p in meta.split(" · ") if p)),
                       table=_table(report), notes=NOTES, sections="\n".join(sections))
