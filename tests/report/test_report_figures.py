"""``collector report`` over an archive built from recorded frames with known faults: the JSON figures
equal the injected faults exactly, and the counts ``collector query`` gives for the same archive."""
from __future__ import annotations

import csv
import subprocess
import sys

import orjson
import pytest

from pipeline import exchanges, report
from tests.conftest import REPO
from tests.report.archive import BASE_US, Row, scenario, write_archive

FAULT_KINDS = ("gap", "disconnect", "resync")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    rows, events = scenario()
    write_archive(root, rows, events)
    return root, rows, events


@pytest.fixture(scope="module")
def reported(archive, tmp_path_factory):
    root, _, _ = archive
    out = tmp_path_factory.mktemp("report")
    result = run("report", "--archive-url", str(root), "--output", str(out / "report.html"), "--json", str(out / "summary.json"))
    assert result.returncode == 0, result.stderr
    return orjson.loads((out / "summary.json").read_bytes()), (out / "report.html").read_text()


# -- the expected figures, computed here from the rows written, independently of pipeline.report
def merged_length(intervals) -> int:
    total, current = 0, None
    for a, b in sorted(intervals):
        if current is None or a > current[1]:
            if current:
                total += current[1] - current[0]
            current = [a, b]
        else:
            current[1] = max(current[1], b)
    return total + (current[1] - current[0] if current else 0)


def minus(interval: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``interval`` outside every hole."""
    pieces = [interval]
    for a, b in holes:
        pieces = [p for lo, hi in pieces for p in ((lo, min(hi, a)), (max(lo, b), hi)) if p[1] > p[0]]
    return pieces


def cadence_us(exchange: str, data_type: str) -> int:
    feed = next(f for f in exchanges.get(exchange).feeds.values() if f.data_type == data_type)
    return int(feed.cadence_secs * 1e6)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ranked(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def expected(rows: list[Row], events: list[dict], start: int | None = None, end: int | None = None) -> dict:
    keys = sorted({(r.exchange, r.symbol, r.data_type) for r in rows} | {(e["exchange"], e["symbol"], e["data_type"]) for e in events})
    if start is None:
        start = min([r.timestamp_collector for r in rows] + [e["start_time"] for e in events])
    if end is None:
        end = max([r.timestamp_collector for r in rows] + [e["end_time"] for e in events])
    out = {}
    for key in keys:
        times = sorted(r.timestamp_collector for r in rows if (r.exchange, r.symbol, r.data_type) == key and start <= r.timestamp_collector <= end)
        mine = [e for e in events if (e["exchange"], e["symbol"], e["data_type"]) == key and e["end_time"] >= start and e["start_time"] <= end]
        limit = cadence_us(key[0], key[2])
        edges = [start, *times, end] if times else [start, end]
        holes = [(a, b) for a, b in zip(edges, edges[1:]) if b - a > limit] if times else [(start, end)]
        clipped = {k: [(max(e["start_time"], start), min(e["end_time"], end)) for e in mine if e["kind"] == k] for k in FAULT_KINDS}
        explained = [i for k in FAULT_KINDS for i in clipped[k]]
        silences = [piece for hole in holes for piece in minus(hole, explained) if piece[1] - piece[0] > limit]
        everything = silences + [i for k in FAULT_KINDS for i in clipped[k]]
        gaps = [e for e in mine if e["kind"] == "gap"]
        counts = {
            "records": len(times),
            "first_record_us": times[0] if times else None,
            "last_record_us": times[-1] if times else None,
            "gaps": len(gaps),
            "missing_ids": sum(e["missing"] or 0 for e in gaps),
            "gaps_size_unknown": sum(1 for e in gaps if e["missing"] is None),
            "outages": sum(1 for e in mine if e["kind"] == "disconnect"),
            "book_unknown": sum(1 for e in mine if e["kind"] == "resync"),
            "silences": len(silences),
            "duplicates": sum(e["missing"] for e in mine if e["kind"] == "duplicate"),
            "out_of_order": sum(e["missing"] for e in mine if e["kind"] == "out_of_order"),
            "gap_seconds": merged_length(clipped["gap"]) / 1e6,
            "outage_seconds": merged_length(clipped["disconnect"]) / 1e6,
            "book_unknown_seconds": merged_length(clipped["resync"]) / 1e6,
            "silent_seconds": merged_length(silences) / 1e6,
            "coverage": round((end - start - merged_length(everything)) / (end - start), 6),
        }
        counts["verdict"] = ("has outages" if counts["outages"] else "has gaps" if counts["gaps"] else
                             "book unknown intervals" if counts["book_unknown"] else "silent intervals" if silences else "complete")
        latencies = [(r.timestamp_collector - r.timestamp_exchange) / 1000 for r in rows
                     if (r.exchange, r.symbol, r.data_type) == key and r.timestamp_exchange is not None and start <= r.timestamp_collector <= end]
        counts["latency"] = (ranked(latencies, 0.5), ranked(latencies, 0.99)) if latencies else None
        out[key] = counts
    return out


def check_streams(summary: dict, want: dict) -> None:
    got = {(s["exchange"], s["symbol"], s["data_type"]): s for s in summary["streams"]}
    assert sorted(got) == sorted(want)
    for key, figures in want.items():
        row = got[key]
        for name, value in figures.items():
            if name == "latency":
                if value is None:
                    assert row["latency_p50_ms"] is None and row["latency_p99_ms"] is None, key
                else:  # the value at rank floor(q (n - 1)), to the middle of its 0.1 ms bin
                    assert abs(row["latency_p50_ms"] - value[0]) <= 0.05 + 1e-9, (key, row["latency_p50_ms"], value)
                    assert abs(row["latency_p99_ms"] - value[1]) <= 0.05 + 1e-9, (key, row["latency_p99_ms"], value)
            elif name.endswith("_seconds"):
                assert row[name] == pytest.approx(value, abs=1e-6), (key, name)
            else:
                assert row[name] == value, (key, name, row[name], value)
        assert row["first_record"] == (report.iso(row["first_record_us"]) if row["first_record_us"] else None)


def test_json_figures_equal_the_injected_faults(archive, reported):
    _, rows, events = archive
    summary, _ = reported
    want = expected(rows, events)
    check_streams(summary, want)
    # the injected faults, spelled out (the computation above could share a mistake with the report)
    by_key = {(s["exchange"], s["symbol"], s["data_type"]): s for s in summary["streams"]}
    btc = by_key[("binance", "btcusdt", "trade")]
    assert (btc["gaps"], btc["missing_ids"], btc["outages"], btc["duplicates"], btc["out_of_order"]) == (1, 5, 1, 3, 2)
    assert btc["records"] == 300 - 5 - 40 and btc["verdict"] == "has outages" and btc["coverage"] < 1
    assert by_key[("binance", "ethusdt", "trade")]["duplicates"] == 4
    assert by_key[("binance", "ethusdt", "trade")]["verdict"] == "complete"
    assert (by_key[("coinbase", "SKL-USD", "trade")]["gaps"], by_key[("coinbase", "SKL-USD", "trade")]["missing_ids"]) == (1, 2)
    okx = by_key[("okx", "BTC-USDT", "orderbook")]
    assert (okx["gaps"], okx["gaps_size_unknown"], okx["book_unknown"], okx["verdict"]) == (1, 1, 1, "has gaps")
    upbit_book = by_key[("upbit", "KRW-LAMB", "orderbook")]
    assert upbit_book["silences"] == 1 and upbit_book["silent_seconds"] > 60 and upbit_book["verdict"] == "silent intervals"
    for key in [("bybit", "BTCUSDT", "orderbook"), ("bybit", "BTCUSDT", "trade"), ("upbit", "KRW-LAMB", "trade")]:
        assert by_key[key]["verdict"] == "complete" and by_key[key]["coverage"] == 1.0, key
    assert by_key[("binance", "btcusdt", "trade")]["latency_p50_ms"] is not None

    totals = summary["totals"]
    assert totals["streams"] == 9 and totals["records"] == len(rows)
    assert (totals["gaps"], totals["missing_ids"], totals["outages"], totals["book_unknown"]) == (3, 7, 1, 1)
    assert (totals["duplicates"], totals["out_of_order"]) == (7, 2)
    assert summary["verdict"] == "has outages"
    assert summary["period"]["from_us"] == min(r.timestamp_collector for r in rows)
    assert summary["period"]["to_us"] == max(r.timestamp_collector for r in rows)
    assert summary["schema"] == 1


def test_json_counts_equal_collector_query(archive, reported, tmp_path):
    root, _, _ = archive
    summary, _ = reported
    records = tmp_path / "records.csv"
    faults = tmp_path / "faults.csv"
    assert run("query", "--archive-url", str(root), "--output", str(records),
               "SELECT exchange, symbol, data_type, count(*) AS n, min(timestamp_collector) AS first, "
               "max(timestamp_collector) AS last FROM snapshots GROUP BY ALL").returncode == 0
    assert run("query", "--archive-url", str(root), "--output", str(faults),
               "SELECT exchange, symbol, data_type, kind, count(*) AS n, coalesce(sum(missing), 0) AS missing "
               "FROM gaps GROUP BY ALL").returncode == 0
    by_key = {(s["exchange"], s["symbol"], s["data_type"]): s for s in summary["streams"]}
    with open(records) as handle:
        for row in csv.DictReader(handle):
            stream = by_key[(row["exchange"], row["symbol"], row["data_type"])]
            assert (stream["records"], stream["first_record_us"], stream["last_record_us"]) == (int(row["n"]), int(row["first"]), int(row["last"]))
    field = {"gap": "gaps", "disconnect": "outages", "resync": "book_unknown"}
    seen = 0
    with open(faults) as handle:
        for row in csv.DictReader(handle):
            stream = by_key[(row["exchange"], row["symbol"], row["data_type"])]
            if row["kind"] in field:
                assert stream[field[row["kind"]]] == int(row["n"])
            if row["kind"] == "gap":
                assert stream["missing_ids"] == int(row["missing"])
            if row["kind"] in ("duplicate", "out_of_order"):
                assert stream[{"duplicate": "duplicates"}.get(row["kind"], row["kind"])] == int(row["missing"])
            seen += 1
    assert seen == 8  # (stream, kind) groups injected


def test_period_and_filters(archive, tmp_path):
    root, rows, events = archive
    start, end = BASE_US + 10_000_000, BASE_US + 30_000_000
    out = tmp_path / "r.json"
    result = run("report", "--archive-url", str(root), "--from", report.iso(start), "--to", str(end),
                 "--exchange", "binance,coinbase", "--symbol", "BTC/USDT,skl-usd", "--output", str(tmp_path / "r.html"), "--json", str(out))
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(out.read_bytes())
    assert (summary["period"]["from_us"], summary["period"]["to_us"]) == (start, end)
    chosen = [r for r in rows if r.exchange in ("binance", "coinbase") and r.symbol in ("btcusdt", "SKL-USD")]
    chosen_events = [e for e in events if e["exchange"] in ("binance", "coinbase") and e["symbol"] in ("btcusdt", "SKL-USD")]
    want = expected(chosen, chosen_events, start, end)
    want = {k: v for k, v in want.items() if v["records"] or any(
        e["end_time"] >= start and e["start_time"] <= end for e in chosen_events if (e["exchange"], e["symbol"], e["data_type"]) == k)}
    check_streams(summary, want)
    assert {s["symbol"] for s in summary["streams"]} == {"btcusdt", "SKL-USD"}
    assert summary["filters"] == {"exchange": ["binance", "coinbase"], "symbol": ["BTC/USDT", "skl-usd"]}


def test_rows_and_files_per_day(archive):
    root, rows, _ = archive
    from pipeline import archive_views

    con = archive_views.connect(archive_url=str(root))
    files = [report.ArchiveFile.from_key(p.relative_to(root).as_posix()) for p in root.rglob("*.parquet") if p.relative_to(root).parts[0] != "gaps"]
    result = report.collect(con, report.Selection(), files)
    for exchange, days in result.days.items():
        assert [d for d, _, _ in days] == ["2024-08-08", "2024-08-09"]
        for when, n, f in days:
            assert n == sum(1 for r in rows if r.exchange == exchange and report.iso(r.timestamp_collector)[:10] == when)
            assert f == len({(r.symbol, when) for r in rows if r.exchange == exchange and report.iso(r.timestamp_collector)[:10] == when})
    assert result.step_secs == 5  # about 90 s of data: 5-second points
    for key, series in result.latency.items():  # per plot step: exact, interpolated quantiles
        for step_start, p50, p99 in series:
            values = [(r.timestamp_collector - r.timestamp_exchange) / 1000 for r in rows if (r.exchange, r.symbol, r.data_type) == key
                      and r.timestamp_exchange is not None and step_start <= r.timestamp_collector < step_start + 5_000_000]
            assert (p50, p99) == pytest.approx((exact_quantile(values, 0.5), exact_quantile(values, 0.99)), abs=1e-9), (key, step_start)
    assert len(result.latency) == 9
    rates = result.rates[("bybit", "BTCUSDT", "orderbook")]
    assert round(sum(v for _, v in rates) * 5) == sum(1 for r in rows if (r.exchange, r.data_type) == ("bybit", "orderbook"))


def test_empty_archive_and_bad_options(tmp_path):
    out = tmp_path / "r.json"
    result = run("report", "--archive-url", str(tmp_path / "none"), "--output", str(tmp_path / "r.html"), "--json", str(out))
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(out.read_bytes())
    assert summary["streams"] == [] and summary["verdict"] == "no data" and summary["period"]["from"] is None
    assert "no records" in (tmp_path / "r.html").read_text()
    bad = run("report", "--archive-url", str(tmp_path), "--from", "yesterday-ish", "--output", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and len((bad.stdout + bad.stderr).strip().splitlines()) == 1, bad.stderr
    missing = run("report", "--archive-url", str(tmp_path))
    assert missing.returncode == 2 and "--output" in missing.stderr


@pytest.mark.parametrize("text, us", [
    ("2024-08-09", 1_723_161_600_000_000),
    ("2024-08-09T00:00:01Z", 1_723_161_601_000_000),
    ("2024-08-09 02:00:00+02:00", 1_723_161_600_000_000),
    ("1723161600000000", 1_723_161_600_000_000),
])
def test_parse_time(text, us):
    assert report.parse_time(text) == us
    assert report.iso(us).endswith("Z")


def test_coverage_of_overlapping_faults_counts_time_once():
    assert report.length([(0, 10), (5, 15), (20, 30)]) == 25
    assert report.union([(5, 6), (0, 1), (1, 2)]) == [(0, 2), (5, 6)]
