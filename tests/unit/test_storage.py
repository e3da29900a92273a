"""pipeline/storage.py: archive keys, Arrow batches from the wire, and the DuckDB ``Store`` on a real
file: dedup (within a batch, across batches, across seals), seals into zstd Parquet, crash recovery at
each step of a seal, the lock against a second process, and the time-bounded memory of stored keys."""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.records import decode_headers, encode_records, gap_event
from pipeline.storage import (GAPS_DDL, KEY_HASH, SNAPSHOT_SCHEMA, SNAPSHOTS_DDL, Store, StoreLocked, archive_key,
                              batch_from_wire)

MIDNIGHT = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in μs
T0 = 1_723_200_000_123_456  # 2024-08-09T10:40:00.123456Z
DAY0 = "2024-08-09"
SERVER = "tokyo-1"
COLUMNS = [field.name for field in SNAPSHOT_SCHEMA]


# -- archive_key

@pytest.mark.parametrize("args, key", [
    (("binance", "btcusdt", "", T0), f"binance/btcusdt/{DAY0}/{T0}.parquet"),
    (("binance", "btcusdt", SERVER, T0), f"binance/btcusdt/{SERVER}/{DAY0}/{T0}.parquet"),
    (("okx", "BTC-USDT", "srv", MIDNIGHT - 1), f"okx/BTC-USDT/srv/2023-12-31/{MIDNIGHT - 1}.parquet"),
    (("okx", "BTC-USDT", "srv", MIDNIGHT), f"okx/BTC-USDT/srv/2024-01-01/{MIDNIGHT}.parquet"),
    (("okx", "BTC-USDT", "srv", MIDNIGHT + 86_400_000_000 - 1), f"okx/BTC-USDT/srv/2024-01-01/{MIDNIGHT + 86_400_000_000 - 1}.parquet"),
    (("upbit", "KRW-BTC", "", 0), "upbit/KRW-BTC/1970-01-01/0.parquet"),
], ids=["no-server-level", "server-level", "just-before-midnight", "midnight", "last-microsecond-of-day", "epoch"])
def test_archive_key_layout(args, key):
    assert archive_key(*args) == key


def test_archive_key_of_gap_files_has_the_prefix_and_suffix():
    assert archive_key("binance", "btcusdt", SERVER, T0, prefix="gaps", suffix="-99") == f"gaps/binance/btcusdt/{SERVER}/{DAY0}/{T0}-99.parquet"


def test_archive_key_never_adds_path_levels_from_names():
    key = archive_key("binance", "BTC/USDT", "../etc", T0)
    assert key.split("/")[:2] == ["binance", "BTC-USDT"] and len(key.split("/")) == 5 and ".." not in key


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "America/Los_Angeles"])
def test_archive_key_day_is_the_utc_day_whatever_the_local_zone(zone, monkeypatch):
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert archive_key("x", "y", "", MIDNIGHT - 1).split("/")[2] == "2023-12-31"
        assert archive_key("x", "y", "", MIDNIGHT).split("/")[2] == "2024-01-01"
    finally:
        monkeypatch.undo()
        time.tzset()


# -- batch_from_wire

def wire(records: list[tuple]) -> tuple[list[list], bytes]:
    """(exchange, symbol, data_type, id, t_collector, t_exchange, data) -> header rows and data frame, through the wire format."""
    headers = [(e, s, d, i, tc, te, None, None, False, "1.0.1", len(data), n)
               for n, (e, s, d, i, tc, te, data) in enumerate(records, 1)]
    frames = encode_records(headers, [r[6] for r in records])
    return decode_headers(frames), frames[2]


def test_batch_from_wire_has_the_spec_columns_and_values():
    records = [("binance", "btcusdt", "trade", "7", T0, T0 - 900, b'{"t":7}'),
               ("binance", "btcusdt", "orderbook", "55", T0 + 1, None, "{\"s\":\"\u20ac\"}".encode())]
    rows, data = wire(records)
    batch = batch_from_wire(rows, memoryview(data))
    assert batch.schema == SNAPSHOT_SCHEMA
    assert batch.schema.names == ["exchange", "symbol", "data_type", "exchange_sequence_id", "timestamp_collector",
                                  "timestamp_exchange", "data"]
    assert batch.to_pylist() == [dict(zip(COLUMNS, r[:6] + (r[6].decode(),))) for r in records]
    assert batch.column("timestamp_exchange").null_count == 1


def test_batch_from_wire_rejects_data_that_is_not_utf8():
    rows, data = wire([("binance", "btcusdt", "trade", "7", T0, None, b'{"t":"\xff\xfe"}')])
    with pytest.raises(pa.ArrowInvalid):
        batch_from_wire(rows, data)


# -- the Store

def snapshot(id_: str = "1", ts: int = T0, exchange: str = "binance", symbol: str = "btcusdt", data_type: str = "trade",
             ts_exchange: int | None = None) -> dict:
    return dict(exchange=exchange, symbol=symbol, data_type=data_type, exchange_sequence_id=id_, timestamp_collector=ts,
                timestamp_exchange=ts_exchange if ts_exchange is not None else ts - 1000,
                data=f'{{"id":"{id_}","ts":{ts}}}')


def repeat(row: dict, ts: int) -> dict:
    """The same exchange message received again at ``ts``: same id, event time and data."""
    return dict(row, timestamp_collector=ts)


def table(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SNAPSHOT_SCHEMA)


def put(store: Store, *rows: dict, events: tuple[dict, ...] = (), generation: int = 1) -> int:
    """One batch insert as persist makes it: records (or none), gap rows, the write-ahead-log generation."""
    return store.insert(table(*rows) if rows else None, list(events), generation)


def outbox_files(outbox: Path) -> dict[str, list[dict]]:
    """Every file in the outbox: relative name -> its rows (sorted); temporary files included, by name."""
    if not outbox.exists():
        return {}
    return {
        path.relative_to(outbox).as_posix(): (
            sorted(pq.read_table(path).to_pylist(), key=lambda r: sorted((k, str(v)) for k, v in r.items()))
            if path.name.endswith(".parquet") else [])
        for path in sorted(outbox.rglob("*")) if path.is_file()
    }


def table_rows(store: Store, name: str) -> list[tuple]:
    return store.con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall()


def remembered(store: Store, *ids: str, exchange: str = "binance", symbol: str = "btcusdt", data_type: str = "trade") -> list[str]:
    """Which of these ids ``stored_keys`` holds: keys are stored hashed, so the question hashes them too."""
    return [row[0] for row in store.con.execute(f"""
        SELECT exchange_sequence_id FROM (SELECT ? AS exchange, ? AS symbol, ? AS data_type,
                                                 unnest(?::VARCHAR[]) AS exchange_sequence_id)
        WHERE {KEY_HASH} IN (SELECT key FROM stored_keys UNION ALL SELECT key FROM untimed_keys) ORDER BY ALL""",
        [exchange, symbol, data_type, list(ids)]).fetchall()]


def stored_key_count(store: Store) -> int:
    return len(table_rows(store, "stored_keys")) + len(table_rows(store, "untimed_keys"))


@pytest.fixture
def opened(tmp_path):
    """Opens Stores on files in tmp_path and closes whatever a test left open."""
    stores: list[Store] = []

    def open_store(name: str = "collector.duckdb", dedup_window_secs: float = 3600.0) -> Store:
        store = Store(tmp_path / name, "256MB", dedup_window_secs)
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        try:
            store.con.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


SAMPLE = [
    snapshot("1", T0), snapshot("2", T0 + 5), snapshot("900", T0 + 2, data_type="orderbook"),
    snapshot("1", T0 + 3, symbol="ethusdt"),
    snapshot("77", T0 + 1, exchange="okx", symbol="BTC-USDT"),
]
GAPS = [
    gap_event("gap", "binance", "btcusdt", "trade", T0 + 10, T0 + 20, expected="3", received="5", missing=2),
    gap_event("disconnect", "binance", "btcusdt", "orderbook", T0 + 30, None),
    gap_event("resync", "okx", "BTC-USDT", "orderbook", T0 + 40, T0 + 50),
]


def expected_outbox(server: str = SERVER) -> dict[str, list[dict]]:
    return {
        f"binance/btcusdt/{server}/{DAY0}/{T0}.parquet": [SAMPLE[0], SAMPLE[1], SAMPLE[2]],
        f"binance/ethusdt/{server}/{DAY0}/{T0 + 3}.parquet": [SAMPLE[3]],
        f"okx/BTC-USDT/{server}/{DAY0}/{T0 + 1}.parquet": [SAMPLE[4]],
        f"gaps/binance/btcusdt/{server}/{DAY0}/{T0 + 10}-{T0 + 30}.parquet": [GAPS[0], GAPS[1]],
        f"gaps/okx/BTC-USDT/{server}/{DAY0}/{T0 + 40}-{T0 + 50}.parquet": [GAPS[2]],
    }


def normalised(files: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {name: sorted(rows, key=lambda r: sorted((k, str(v)) for k, v in r.items())) for name, rows in files.items()}


def test_insert_returns_the_number_of_new_rows_and_dedups_within_a_batch(opened):
    store = opened()
    first, repeat = snapshot("1", T0), snapshot("1", T0 + 50)
    assert put(store, repeat, first, snapshot("2", T0 + 1)) == 2
    assert store.pending_rows() == 2
    # of two copies in one batch, the one received first is kept
    assert store.con.execute("SELECT timestamp_collector FROM snapshots WHERE exchange_sequence_id = '1'").fetchall() == [(T0,)]


def test_insert_dedups_across_batches(opened):
    store = opened()
    assert put(store, snapshot("1"), snapshot("2")) == 2
    assert put(store, snapshot("2", T0 + 9), snapshot("3")) == 1
    assert put(store, snapshot("1", T0 + 9), snapshot("3", T0 + 9)) == 0
    assert [r[3] for r in table_rows(store, "snapshots")] == ["1", "2", "3"]


@pytest.mark.parametrize("other", [
    dict(exchange="okx"), dict(symbol="ethusdt"), dict(data_type="orderbook"), dict(id_="1 "),
], ids=["exchange", "symbol", "data_type", "id"])
def test_the_dedup_key_is_all_four_columns(opened, other):
    store = opened()
    assert put(store, snapshot("1")) == 1
    assert put(store, snapshot(**{"id_": "1", **other})) == 1


def test_an_empty_insert_stores_nothing(opened):
    store = opened()
    assert store.insert(table(), [], 1) == 0
    assert put(store) == 0
    assert store.pending_rows() == 0


def test_insert_records_the_write_ahead_log_generation_it_committed(opened):
    store = opened()
    assert store.committed_generation() == 0
    put(store, snapshot("1"), generation=3)
    assert store.committed_generation() == 3
    put(store, events=(GAPS[0],), generation=4)  # gap rows alone commit their generation too
    assert store.committed_generation() == 4
    store.close()
    assert opened().committed_generation() == 4


PROGRESS = [("binance", "btcusdt", "trade", "e1", 5, T0 + 5, "5"), ("okx", "BTC-USDT", "trade", "e2", 9, T0 + 9, "99")]


def test_duckdb_spills_beside_the_database_file_not_in_the_working_directory(opened, tmp_path):
    store = opened()
    spill = store.con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
    assert spill == str(tmp_path / "collector.duckdb.tmp")


def duckdb_cached_bytes(store: Store) -> int:
    return store.con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0]


def test_a_checkpoint_lets_duckdb_forget_the_blocks_it_wrote_and_keeps_the_memory_limit(opened):
    store = opened()
    rows = [snapshot(str(n), T0 + n) | {"data": f'{{"id":{n},"pad":"{os.urandom(200).hex()}"}}'} for n in range(100_000)]
    assert store.insert(table(*rows), [], 1) == len(rows)
    cached = duckdb_cached_bytes(store)
    assert cached > 20 * 2**20  # the unsealed rows (~40 MB of JSON), in DuckDB's buffer pool
    store.checkpoint()
    assert duckdb_cached_bytes(store) <= 16 * 2**20  # RELEASED_MEMORY_LIMIT
    assert store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] == "244.1 MiB"  # 256MB
    assert store.pending_rows() == len(rows) and put(store, rows[7], generation=2) == 0  # read back from the file


def test_a_failed_insert_stores_nothing_at_all_so_the_retry_is_not_taken_for_a_repeat(opened):
    store = opened()
    put(store, snapshot("1"), generation=1)
    broken_event = dict(GAPS[0], kind=None)  # NOT NULL column: the insert fails after the records went in
    with pytest.raises(Exception):
        put(store, snapshot("2"), events=(broken_event,), generation=2)
    assert store.committed_generation() == 1
    assert [r[3] for r in table_rows(store, "snapshots")] == ["1"]
    assert remembered(store, "1", "2") == ["1"] and stored_key_count(store) == 1
    assert table_rows(store, "gaps") == []
    assert put(store, snapshot("2"), events=(GAPS[0],), generation=2) == 1  # the retry stores it


def test_seal_writes_one_zstd_parquet_file_per_exchange_and_symbol_and_empties_the_tables(opened, tmp_path):
    store, outbox = opened(), tmp_path / "outbox"
    put(store, *SAMPLE, events=tuple(GAPS))
    files = store.seal(outbox, SERVER, 3600)
    assert sorted(p.relative_to(outbox).as_posix() for p in files) == sorted(expected_outbox())
    assert outbox_files(outbox) == normalised(expected_outbox())  # no temporary file left beside them
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        assert {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)} == {"ZSTD"}
    assert pq.read_schema(files[0]).names == COLUMNS
    assert store.pending_rows() == 0
    assert table_rows(store, "gaps") == []


def test_sealing_with_no_server_name_leaves_the_level_out(opened, tmp_path):
    store, outbox = opened(), tmp_path / "outbox"
    put(store, SAMPLE[0])
    assert [p.relative_to(outbox).as_posix() for p in store.seal(outbox, "", 3600)] == [f"binance/btcusdt/{DAY0}/{T0}.parquet"]


def test_a_seal_with_nothing_new_writes_nothing(opened, tmp_path):
    store, outbox = opened(), tmp_path / "outbox"
    put(store, *SAMPLE)
    store.seal(outbox, SERVER, 3600)
    before = {p: p.stat().st_mtime_ns for p in outbox.rglob("*")}
    assert store.seal(outbox, SERVER, 3600) == []
    assert {p: p.stat().st_mtime_ns for p in outbox.rglob("*")} == before


def test_gap_rows_alone_are_sealed(opened, tmp_path):
    store, outbox = opened(), tmp_path / "outbox"
    put(store, events=tuple(GAPS[2:]))
    assert [p.relative_to(outbox).as_posix() for p in store.seal(outbox, SERVER, 3600)] == \
        [f"gaps/okx/BTC-USDT/{SERVER}/{DAY0}/{T0 + 40}-{T0 + 50}.parquet"]


def test_a_repeat_of_a_sealed_row_is_not_stored_again(opened, tmp_path):
    store, outbox = opened(), tmp_path / "outbox"
    put(store, snapshot("1"), snapshot("2"))
    store.seal(outbox, SERVER, 3600)
    assert remembered(store, "1", "2") == ["1", "2"]
    assert put(store, repeat(snapshot("1"), T0 + 60_000_000), snapshot("3", T0 + 60_000_000)) == 1
    assert store.seal(outbox, SERVER, 3600)[0].name == f"{T0 + 60_000_000}.parquet"
    assert [r["exchange_sequence_id"] for rows in outbox_files(outbox).values() for r in rows] == ["1", "2", "3"]


MINUTE = 60_000_000


@pytest.mark.parametrize("ahead_then, ahead_now", [(-1000, -1000), (50_000_000, 50_000_000), (5_000_000, -1000), (None, None)],
                         ids=["event-before-receipt", "exchange-clock-50s-ahead", "exchange-clock-moved-5s", "no-event-time"])
def test_a_repeat_long_after_its_original_is_caught_among_newer_keys(ahead_then, ahead_now, opened):
    """``ahead_*``: the exchange's event time minus our receipt time, when the original came and when the repeat did."""
    store = opened()
    original = dict(snapshot("1", T0), timestamp_exchange=None if ahead_then is None else T0 + ahead_then)
    assert put(store, original) == 1
    for minute in range(1, 40):  # newer keys, in row groups of their own
        later = T0 + minute * MINUTE
        assert put(store, *(snapshot(f"{minute}-{n}", later + n) for n in range(9000)), generation=minute + 1) == 9000
    now = T0 + 40 * MINUTE
    fresh = dict(snapshot("new", now), timestamp_exchange=None if ahead_now is None else now + ahead_now)
    assert put(store, repeat(original, now), fresh, generation=99) == 1
    assert store.con.execute("SELECT count(*) FROM snapshots WHERE exchange_sequence_id = '1'").fetchall() == [(1,)]


def test_event_times_at_the_ends_of_the_64_bit_range_are_stored_and_deduplicated(opened):
    store = opened()
    extremes = [snapshot("low", T0, ts_exchange=-(2**63 - 2)), snapshot("high", T0, ts_exchange=2**63 - 2)]
    assert put(store, *extremes) == 2
    assert put(store, *(repeat(row, T0 + MINUTE) for row in extremes), generation=2) == 0


def test_keys_that_only_differ_where_the_symbol_ends_are_different_keys(opened):
    store = opened()
    assert put(store, snapshot("c", symbol="a\x00b"), snapshot("b\x00c", symbol="a")) == 2
    assert put(store, snapshot("c", symbol="a\x00b", ts=T0 + 9), snapshot("b\x00c", symbol="a", ts=T0 + 9)) == 0


def test_a_file_with_the_unhashed_stored_keys_of_an_older_version_keeps_its_dedup_memory(tmp_path):
    path = tmp_path / "collector.duckdb"
    with duckdb.connect(str(path)) as con:  # the layout before keys were hashed
        con.execute("CREATE TABLE stored_keys (exchange VARCHAR, symbol VARCHAR, data_type VARCHAR, "
                    "exchange_sequence_id VARCHAR, seen_at BIGINT)")
        con.execute("INSERT INTO stored_keys VALUES ('binance', 'btcusdt', 'trade', '1', ?)", [T0])
    store = Store(path, "256MB")
    try:
        assert remembered(store, "1", "2") == ["1"]
        assert put(store, snapshot("1", T0 + 5), snapshot("2", T0 + 5)) == 1
        assert [row[1] for row in table_rows(store, "untimed_keys")] == [T0]  # when it was seen, kept
    finally:
        store.close()


def test_stored_keys_are_forgotten_after_the_dedup_window_plus_an_archive_interval(opened, tmp_path):
    store, outbox = opened(dedup_window_secs=10), tmp_path / "outbox"
    horizon = T0 + 1_000_000  # the newest key minus (10 s window + 60 s interval)
    newest = horizon + 70_000_000
    put(store, snapshot("old", horizon - 1), snapshot("edge", horizon), snapshot("new", newest))
    store.seal(outbox, SERVER, 60)
    assert remembered(store, "old", "edge", "new") == ["edge", "new"] and stored_key_count(store) == 2
    # an id restarted by the exchange long after is a real event again; a key still remembered is a repeat
    assert put(store, snapshot("old", newest + 1), repeat(snapshot("edge", horizon), newest + 1),
               repeat(snapshot("new", newest), newest + 1)) == 1
    assert [r[3] for r in table_rows(store, "snapshots")] == ["old"]


def test_store_survives_close_and_reopen_with_its_rows_and_keys(opened, tmp_path):
    store = opened()
    put(store, *SAMPLE)
    store.close()
    again = opened()
    assert len(table_rows(again, "snapshots")) == len(SAMPLE)
    assert put(again, *SAMPLE) == 0
    assert again.pending_rows() == len(SAMPLE)


# -- crash recovery: a seal interrupted at each step finishes with the same files, once

def reference_outbox(opened, tmp_path) -> dict[str, list[dict]]:
    store, outbox = opened("reference.duckdb"), tmp_path / "reference-outbox"
    put(store, *SAMPLE, events=tuple(GAPS))
    store.seal(outbox, SERVER, 3600)
    return outbox_files(outbox)


def test_reference_outbox_is_what_the_spec_layout_says(opened, tmp_path):
    assert reference_outbox(opened, tmp_path) == normalised(expected_outbox())


def test_crash_after_step_1_the_rename_is_finished_by_recover(opened, tmp_path):
    expected = reference_outbox(opened, tmp_path)
    store, outbox = opened(), tmp_path / "outbox"
    put(store, *SAMPLE, events=tuple(GAPS))
    con = store.con  # step 1 of Store.seal, by hand; then the process dies
    con.execute("BEGIN TRANSACTION")
    con.execute("ALTER TABLE snapshots RENAME TO sealing_snapshots")
    con.execute("ALTER TABLE gaps RENAME TO sealing_gaps")
    con.execute(SNAPSHOTS_DDL)
    con.execute(GAPS_DDL)
    con.execute("COMMIT")
    con.close()
    assert not outbox.exists()

    restarted = opened()
    files = restarted.recover(outbox, SERVER)
    assert sorted(p.relative_to(outbox).as_posix() for p in files) == sorted(expected)
    assert outbox_files(outbox) == expected
    assert restarted.recover(outbox, SERVER) == []  # done once, not again
    assert table_rows(restarted, "snapshots") == []
    # the keys of the recovered rows are still remembered
    assert put(restarted, *SAMPLE) == 0


class _Crash(Exception):
    pass


class _DiesBeforeDrop:
    """A connection that dies where step 3 of a seal would drop the sealing tables."""

    def __init__(self, con):
        self._con = con

    def execute(self, sql, *args):
        if sql.strip().upper().startswith("DROP TABLE SEALING"):
            raise _Crash(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


@pytest.mark.parametrize("point", ["seal.after_rename", "seal.after_file", "seal.before_drop"])
def test_a_seal_killed_at_any_step_is_finished_by_recover_with_the_same_files_once(point, opened, tmp_path, monkeypatch):
    expected = reference_outbox(opened, tmp_path)
    store, outbox = opened(), tmp_path / "outbox"
    put(store, *SAMPLE, events=tuple(GAPS))

    def crash_point(name: str) -> None:
        if name == point:
            raise _Crash(name)

    monkeypatch.setattr("pipeline.storage.crash_point", crash_point)
    with pytest.raises(_Crash):
        store.seal(outbox, SERVER, 3600)
    monkeypatch.undo()  # the restarted process runs without the crash
    written_before = outbox_files(outbox)
    store.con.close()  # the process dies here (an open transaction, if any, is lost)

    restarted = opened()
    files = restarted.recover(outbox, SERVER)
    assert sorted(p.relative_to(outbox).as_posix() for p in files) == sorted(expected)
    assert outbox_files(outbox) == expected  # same names, same rows, no second copy, no temporary file
    assert set(written_before) <= set(expected)
    assert restarted.recover(outbox, SERVER) == []
    assert restarted.pending_rows() == 0 and table_rows(restarted, "gaps") == []


class _DiesBeforeDrop:
    """A connection whose DROP of the sealing tables fails (step 3 never happens)."""

    def __init__(self, con):
        self._con = con

    def execute(self, sql, *args):
        if sql.strip().upper().startswith("DROP TABLE SEALING"):
            raise _Crash(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_crash_after_step_2_files_written_tables_not_dropped_gives_the_same_files_once(opened, tmp_path):
    expected = reference_outbox(opened, tmp_path)
    store, outbox = opened(), tmp_path / "outbox"
    put(store, *SAMPLE, events=tuple(GAPS))
    real = store.con
    store.con = _DiesBeforeDrop(real)
    with pytest.raises(_Crash):
        store.seal(outbox, SERVER, 3600)
    assert outbox_files(outbox) == expected  # step 2 was complete
    real.close()  # the process dies with the drop's transaction open

    restarted = opened()
    files = restarted.recover(outbox, SERVER)
    assert sorted(p.relative_to(outbox).as_posix() for p in files) == sorted(expected)
    assert outbox_files(outbox) == expected  # rewritten under the same names: no second copy
    assert restarted.recover(outbox, SERVER) == []


def test_after_a_crash_the_next_seal_finishes_the_old_one_and_seals_the_new_rows(opened, tmp_path):
    store, outbox = opened(), tmp_path / "outbox"
    put(store, *SAMPLE)
    real = store.con
    store.con = _DiesBeforeDrop(real)
    with pytest.raises(_Crash):
        store.seal(outbox, SERVER, 3600)
    real.close()

    restarted = opened()
    later = T0 + 3_600_000_000
    assert put(restarted, repeat(SAMPLE[0], later), snapshot("3", later)) == 1  # "1" was sealed before the crash
    files = restarted.seal(outbox, SERVER, 3600)
    assert f"binance/btcusdt/{SERVER}/{DAY0}/{later}.parquet" in {p.relative_to(outbox).as_posix() for p in files}
    ids = [(r["exchange"], r["symbol"], r["data_type"], r["exchange_sequence_id"]) for rows in outbox_files(outbox).values() for r in rows]
    assert len(ids) == len(set(ids)) == len(SAMPLE) + 1
    assert restarted.pending_rows() == 0


# -- a statement whose result was not read to the end

# DuckDB 2 refuses ``register`` (the first step of ``Store.insert``) while the connection holds a
# result that was not fetched to its end, and ``fetchone()`` on a one-row result leaves it so. Every
# Store method ending in ``fetchone()`` therefore breaks the next insert; after an empty seal (an
# archive interval with nothing new, a second SIGUSR1) persist can never insert again.
LEAVES_A_RESULT_OPEN = {
    "empty seal": lambda store, outbox: store.seal(outbox, SERVER, 3600),
    "pending_rows": lambda store, outbox: store.pending_rows(),
    "committed_generation": lambda store, outbox: (put(store, snapshot("0")), store.committed_generation()),
}


@pytest.mark.parametrize("call", list(LEAVES_A_RESULT_OPEN.values()), ids=list(LEAVES_A_RESULT_OPEN))
def test_an_insert_works_after_any_other_store_call(call, opened, tmp_path):
    store = opened()
    call(store, tmp_path / "outbox")
    assert put(store, snapshot("1")) == 1


def test_persist_keeps_inserting_after_a_seal_that_found_nothing(tmp_path):
    from pipeline import config as cfg
    from pipeline.records import encode_records
    from pipeline.wal import WriteAheadLog
    from stages.persist import Persister

    conf = cfg.load({"data_dir": str(tmp_path), "home_server_name": None, "archive_interval_secs": None})
    store = Store(tmp_path / "collector.duckdb", "256MB", 3600)
    persister = Persister(store, WriteAheadLog(tmp_path / "wal"), conf)
    try:
        persister.seal()  # an archive interval with nothing new
        data = b'{"t":1}'
        persister.receive(encode_records([("binance", "btcusdt", "trade", "1", T0, None, 1, 0, False, "e", len(data), 1)], [data]))
        persister.flush()
        assert persister.buffer.records == 0
        assert len(table_rows(store, "snapshots")) == 1
    finally:
        persister.wal.close()
        store.con.close()


def _persister(tmp_path):
    from pipeline import config as cfg
    from pipeline.wal import WriteAheadLog
    from stages.persist import Persister

    conf = cfg.load({"data_dir": str(tmp_path), "home_server_name": None, "archive_interval_secs": None})
    return Persister(Store(tmp_path / "collector.duckdb", "256MB", 3600), WriteAheadLog(tmp_path / "wal"), conf)


def _numbered(numbers: list[int]) -> list[bytes]:
    datas = [b'{"t":%d}' % n for n in numbers]
    return encode_records([("binance", "btcusdt", "trade", str(n), T0 + n, None, n, n - 1, False, "e", len(d), n)
                           for n, d in zip(numbers, datas)], datas)


def _close(persister) -> None:
    persister.wal.close()
    persister.store.con.close()


def test_persist_writes_one_lost_row_for_records_that_never_arrived_even_across_a_crash(tmp_path):
    from pipeline import metrics

    lost_counter = metrics.RECORDS_LOST.labels(exchange="binance", symbol="btcusdt", data_type="trade")
    counted_before = lost_counter._value.get()
    persister = _persister(tmp_path)
    persister.receive(_numbered([1, 2, 3]))
    persister.flush()
    persister.receive(_numbered([7, 8]))  # 4..6 dropped or lost on the way
    assert lost_counter._value.get() - counted_before == 3
    _close(persister)  # killed before this batch was committed: the write-ahead log has it

    restarted = _persister(tmp_path)
    try:
        assert restarted.replay_log() == 1
        restarted.flush()
        restarted.receive(_numbered([9, 10]))
        restarted.flush()
        lost = [row for row in table_rows(restarted.store, "gaps") if row[0] == "lost"]
        assert lost == [("lost", "binance", "btcusdt", "trade", "3", "7", 3, T0 + 3, T0 + 7)]
        assert len(table_rows(restarted.store, "snapshots")) == 7
    finally:
        _close(restarted)


def test_what_persist_knew_of_each_stream_survives_a_restart(tmp_path):
    persister = _persister(tmp_path)
    persister.receive(_numbered([1, 2]))
    persister.flush()
    _close(persister)
    restarted = _persister(tmp_path)
    try:
        restarted.receive(_numbered([5]))
        restarted.flush()
        assert [row[6] for row in table_rows(restarted.store, "gaps") if row[0] == "lost"] == [2]
    finally:
        _close(restarted)


KILLED_AFTER_TWO_INSERTS = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.unit.test_storage import _numbered, _persister
persister = _persister(Path(sys.argv[1]))
persister.receive(_numbered([1, 2, 3]))
persister.flush()
persister.receive(_numbered([4, 5]))
persister.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_inserts_no_checkpoint_covered_come_back_from_the_log_after_a_kill(tmp_path):
    """DuckDB writes no WAL here: a kill rolls the file back to its last checkpoint, and persist's log
    must still hold every message since then."""
    from tests.conftest import REPO

    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_TWO_INSERTS, str(tmp_path), str(REPO)], timeout=60)
    assert killed.returncode == -9
    restarted = _persister(tmp_path)
    try:
        assert restarted.store.pending_rows() == 0  # the kill came before any checkpoint
        assert restarted.replay_log() == 2
        restarted.flush()
        assert sorted(int(row[3]) for row in table_rows(restarted.store, "snapshots")) == [1, 2, 3, 4, 5]
    finally:
        _close(restarted)


KILLED_AFTER_AN_EMPTY_SEAL = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.unit.test_storage import PROGRESS, SERVER, put, snapshot
from pipeline.storage import Store
store = Store(Path(sys.argv[1]) / "collector.duckdb", "256MB", 3600)
put(store, snapshot("1"), generation=1)
store.seal(Path(sys.argv[1]) / "outbox", SERVER, 3600)
store.insert(None, [], 2, PROGRESS)  # a batch of repeats only: no row, but the streams moved on
store.seal(Path(sys.argv[1]) / "outbox", SERVER, 3600)  # nothing to seal
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_every_seal_ends_with_a_checkpoint_even_with_nothing_to_seal(tmp_path):
    """persist drops its log through the last insert after any seal; an empty seal must have made that
    insert durable too, or a crash would lose what it stored of the streams (and report false losses)."""
    from tests.conftest import REPO

    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_AN_EMPTY_SEAL, str(tmp_path), str(REPO)], timeout=60)
    assert killed.returncode == -9
    store = Store(tmp_path / "collector.duckdb", "256MB", 3600)
    try:
        assert store.committed_generation() == 2
        assert store.stream_progress() == sorted(PROGRESS, key=lambda row: row[5])
    finally:
        store.con.close()


def test_the_log_drops_a_generation_once_a_checkpoint_made_its_insert_durable(tmp_path, monkeypatch):
    from stages import persist

    persister = _persister(tmp_path)
    try:
        persister.receive(_numbered([1, 2]))
        persister.flush()
        kept = persister.wal.generations()
        assert persister.committed_generation in kept  # no checkpoint yet: a kill would need it
        monkeypatch.setattr(persist, "CHECKPOINT_BYTES", 1)
        persister.receive(_numbered([3]))
        persister.flush()  # this insert passes CHECKPOINT_BYTES
        assert persister.wal.generations() == [persister.wal.generation]  # only the one being written
    finally:
        _close(persister)


# -- one process per database file

HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            return ""
        return process.stdout.readline().decode().strip()
    finally:
        selector.close()


def test_a_database_file_held_by_another_process_is_store_locked(opened, tmp_path):
    path = tmp_path / "collector.duckdb"
    opened().close()  # the file exists, with its tables
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _read_line(holder, 20.0) == "holding", "the holder process did not open the file"
        with pytest.raises(StoreLocked) as info:
            Store(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    finally:
        holder.stdin.close()  # the holder exits and releases the file
        holder.wait(timeout=20)
        holder.stdout.close()
    # released: it opens again (the lock may outlive the process by a moment)
    deadline = time.monotonic() + 10
    while True:
        try:
            opened().close()
            break
        except StoreLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
