"""``replay`` over small archives built from real recorded frames (synthetic receipt times): every
sample equals a book computed independently here, and the book is never claimed where it is
unknown (gap-table intervals, broken chains, checksum mismatches, before the first snapshot)."""
from __future__ import annotations

import orjson
import pytest

from pipeline import archive_views
from pipeline.books import replay, to_us
from pipeline.exchanges import REGISTRY
from tests.books.helpers import (
    T0,
    T0_ISO,
    RefBook,
    bybit_snapshot_frame,
    expected_rows,
    gap,
    okx_snapshot_frame,
    ref_apply,
    row,
    write_archive,
)
from tests.conftest import fixture_lines

STEP = 100_000  # frames 100 ms apart
HALF = STEP // 2


def t(i: int) -> int:
    """Receipt time of frame i of a stream."""
    return T0 + (i + 1) * STEP


def rows_of(exchange: str, frames: list[tuple[int, bytes]]) -> list[dict]:
    """Archive rows as ingest makes them (the adapter's symbol, id and exchange time)."""
    out = []
    for received, frame in frames:
        (record,) = REGISTRY[exchange].parse(frame).records
        out.append(row(exchange, record.symbol, record.exchange_sequence_id, received, frame, record.timestamp_exchange))
    return out


def assert_rows(table, expected: list[dict], exchange: str, symbol: str) -> None:
    got = table.to_pylist()
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["exchange"] == exchange and g["symbol"] == symbol
        assert {k: g[k] for k in e} == e, g["timestamp"]
        if not g["valid"]:
            assert all(v is None for k, v in g.items() if "_price_" in k or "_size_" in k)


def samples(first: int, last: int, every: int = HALF) -> list[int]:
    return list(range(first, last + 1, every))


# -- OKX books: snapshot + deltas with checksums (2022 frames: derived ids, receipt order) --------

def okx_frames(inst: str = "BTC-USDT") -> list[bytes]:
    return [line for line in fixture_lines("okx/books.jsonl") if orjson.loads(line)["arg"]["instId"] == inst]


def okx_truth_after(frames: list[bytes], n: int) -> RefBook:
    book = RefBook()
    for frame in frames[: n + 1]:
        ref_apply("okx", book, frame)
    return book


@pytest.fixture
def okx_all_instruments(tmp_path):
    """Every recorded books frame, each instrument on its own clock, in one archive."""
    rows = []
    for inst in ("BTC-USDT", "BTC-USD-220527", "UNI-USD-SWAP"):
        rows += rows_of("okx", [(t(i), frame) for i, frame in enumerate(okx_frames(inst))])
    return write_archive(tmp_path / "archive", rows)


def test_okx_every_sample_equals_the_reference_book(okx_all_instruments):
    frames = okx_frames()
    timeline = [(t(i), frame) for i, frame in enumerate(frames)]
    times = samples(T0, t(len(frames)) + STEP)
    table = replay(okx_all_instruments, "okx", "BTC-USDT", T0, times[-1], every_us=HALF, depth=10)
    assert_rows(table, expected_rows("okx", "BTC-USDT", timeline, times, 10), "okx", "BTC-USDT")
    meta = table.schema.metadata
    assert meta[b"checksum_failures"] == b"0" and meta[b"messages"] == str(len(frames)).encode()
    assert table.column("valid").to_pylist()[:2] == [False, False]  # before the first snapshot
    assert table.num_rows == len(times)
    # the last message applied, for a sample exactly at a message's receipt time
    at_frame_5 = table.to_pylist()[times.index(t(5))]
    assert at_frame_5["exchange_sequence_id"] == rows_of("okx", [(t(5), frames[5])])[0]["exchange_sequence_id"]


def test_okx_other_instruments_and_symbol_spellings(okx_all_instruments):
    frames = okx_frames("UNI-USD-SWAP")
    timeline = [(t(i), frame) for i, frame in enumerate(frames)]
    times = samples(T0, t(len(frames)), STEP * 3)
    for spelling in ("UNI-USD-SWAP", "uni-usd-swap"):
        table = replay(okx_all_instruments, "okx", spelling, T0, times[-1], every_us=STEP * 3, depth=25)
        assert_rows(table, expected_rows("okx", "UNI-USD-SWAP", timeline, times, 25), "okx", "UNI-USD-SWAP")


def test_okx_resync_gap_makes_samples_unknown_and_the_book_restarts_at_the_next_snapshot(tmp_path):
    frames = okx_frames()
    snapshot = okx_snapshot_frame("BTC-USDT", okx_truth_after(frames, 30), 1652459230000)
    t_snapshot = t(30) + HALF
    # frame 26 never arrived; 27..30 were stored while the chain was broken; the resync brought a
    # snapshot equal to the book after frame 30
    archived = [(t(i), frames[i]) for i in range(len(frames)) if i != 26]
    archived.insert(30, (t_snapshot, snapshot))
    archived.sort(key=lambda item: item[0])
    gaps = [gap("gap", "okx", "BTC-USDT", t(25), t(27)), gap("resync", "okx", "BTC-USDT", t(27), t_snapshot)]
    archive = write_archive(tmp_path / "archive", rows_of("okx", archived), gaps)

    times = samples(T0, t(len(frames)))
    table = replay(archive, "okx", "BTC-USDT", T0, times[-1], every_us=HALF, depth=5)
    expected = expected_rows("okx", "BTC-USDT", archived, times, 5, unknown=[(t(25), t_snapshot)])
    assert_rows(table, expected, "okx", "BTC-USDT")
    got = table.to_pylist()
    inside = [r for r in got if t(25) <= r["timestamp"] < t_snapshot]
    assert inside and not any(r["valid"] for r in inside)
    assert all(r["valid"] for r in got if r["timestamp"] >= t_snapshot)
    # after the snapshot the book is the true book (all frames, none lost) again
    truth = RefBook()
    for frame in frames:
        ref_apply("okx", truth, frame)
    last = got[-1]
    assert {k: last[k] for k in truth.row(5)} == truth.row(5)
    assert table.schema.metadata[b"checksum_failures"] == b"0"  # nothing was verified on an unknown book


def test_okx_lost_delta_without_gap_rows_is_caught_by_the_checksum(tmp_path):
    frames = okx_frames()
    snapshot = okx_snapshot_frame("BTC-USDT", okx_truth_after(frames, 30), 1652459230000)
    t_snapshot = t(30) + HALF
    archived = sorted([(t(i), frames[i]) for i in range(len(frames)) if i != 26] + [(t_snapshot, snapshot)],
                      key=lambda item: item[0])
    archive = write_archive(tmp_path / "archive", rows_of("okx", archived))
    times = samples(T0, t(len(frames)))

    table = replay(archive, "okx", "BTC-USDT", T0, times[-1], every_us=HALF, depth=5)
    assert table.schema.metadata[b"checksum_failures"] == b"1"
    # frame 27 (applied on a book without 26) fails its checksum: unknown until the snapshot
    expected = expected_rows("okx", "BTC-USDT", archived, times, 5, unknown=[(t(27), t_snapshot)])
    assert_rows(table, expected, "okx", "BTC-USDT")

    unchecked = replay(archive, "okx", "BTC-USDT", T0, times[-1], every_us=HALF, depth=5, verify_checksum=False)
    assert unchecked.schema.metadata[b"checksum_failures"] == b"0"
    assert all(unchecked.column("valid").to_pylist()[2:])


def test_okx_at_a_time_and_one_row_per_message(okx_all_instruments):
    frames = okx_frames()
    timeline = [(t(i), frame) for i, frame in enumerate(frames)]
    every = replay(okx_all_instruments, "okx", "BTC-USDT", T0, t(40), every_us=HALF, depth=3).to_pylist()
    for when in (t(12), t(12) + HALF, t(40)):
        (one,) = replay(okx_all_instruments, "okx", "BTC-USDT", at_us=when, depth=3).to_pylist()
        assert one == next(r for r in every if r["timestamp"] == when)
    # ISO times are accepted too
    (iso,) = replay(okx_all_instruments, "okx", "BTC-USDT", at_us="2026-11-25T14:00:01.3Z", depth=3).to_pylist()
    assert iso["timestamp"] == T0 + 1_300_000 and iso == next(r for r in every if r["timestamp"] == T0 + 1_300_000)

    per_message = replay(okx_all_instruments, "okx", "BTC-USDT", t(10), t(20), depth=3)
    assert per_message.column("timestamp").to_pylist() == [t(i) for i in range(10, 21)]
    assert_rows(per_message, expected_rows("okx", "BTC-USDT", timeline, [t(i) for i in range(10, 21)], 3), "okx", "BTC-USDT")


def test_okx_sample_long_after_the_last_snapshot_finds_it(okx_all_instruments):
    frames = okx_frames()
    later = T0 + 5 * 3600 * 1_000_000  # beyond the first search window (1 h) and the second (4 h)
    (one,) = replay(okx_all_instruments, "okx", "BTC-USDT", at_us=later, depth=4).to_pylist()
    truth = okx_truth_after(frames, len(frames) - 1)
    assert one["valid"] and {k: one[k] for k in truth.row(4)} == truth.row(4)


def test_more_levels_asked_than_the_book_has_are_null(tmp_path):
    frames = okx_frames("BTC-USD-220527")
    archive = write_archive(tmp_path / "archive", rows_of("okx", [(t(i), f) for i, f in enumerate(frames)]))
    (one,) = replay(archive, "okx", "BTC-USD-220527", at_us=t(0), depth=100).to_pylist()
    snapshot = orjson.loads(frames[0])["data"][0]
    assert one["valid"] and one["bid_price_71"] is not None and one["bid_price_72"] is None
    assert one["ask_size_63"] is not None and one["ask_size_64"] is None and len(snapshot["bids"]) == 72


# -- Bybit orderbook: numeric update ids give the order ----------------------------------------

def bybit_frames() -> list[bytes]:
    return fixture_lines("bybit/orderbook.200.jsonl")


def test_bybit_rows_are_applied_in_update_id_order_whatever_their_receipt_order(tmp_path):
    frames = bybit_frames()
    received = [t(i) for i in range(len(frames))]
    received[10], received[11] = received[11], received[10]  # frame 11 was received before frame 10
    archive = write_archive(tmp_path / "archive", rows_of("bybit", list(zip(received, frames))))
    times = samples(T0, t(len(frames)))
    table = replay(archive, "bybit", "BTCUSDT", T0, times[-1], every_us=HALF, depth=10)
    # the book waits for frame 10: both take effect when 10 arrived
    timeline = [(t(i), f) for i, f in enumerate(frames)]
    timeline[10] = (t(11), frames[10])
    assert_rows(table, expected_rows("bybit", "BTCUSDT", timeline, times, 10), "bybit", "BTCUSDT")
    assert table.schema.metadata[b"chain_breaks"] == b"0"


def test_bybit_broken_chain_without_gap_rows_is_unknown_until_the_next_snapshot(tmp_path):
    frames = bybit_frames()
    truth = RefBook()
    for frame in frames[:101]:
        ref_apply("bybit", truth, frame)
    u100 = orjson.loads(frames[100])["data"]["u"]
    archived = [(t(i), f) for i, f in enumerate(frames) if i != 50]
    archived[99] = (t(100), bybit_snapshot_frame("BTCUSDT", truth, u100, 1786310826000))  # index 99 is frame 100
    archive = write_archive(tmp_path / "archive", rows_of("bybit", archived))
    times = samples(T0, t(len(frames)))
    table = replay(archive, "bybit", "BTCUSDT", T0, times[-1], every_us=HALF, depth=10)
    assert table.schema.metadata[b"chain_breaks"] == b"1"
    expected = expected_rows("bybit", "BTCUSDT", archived, times, 10, unknown=[(t(51), t(100))])
    assert_rows(table, expected, "bybit", "BTCUSDT")


def test_bybit_update_id_restart_begins_a_new_epoch_after_the_old_one(tmp_path):
    frames = bybit_frames()
    restart = orjson.dumps({"topic": "orderbook.50.BTCUSDT", "ts": 1786310900000, "type": "snapshot",
                            "data": {"s": "BTCUSDT", "b": [["65000", "1"]], "a": [["65001", "1"]], "u": 1, "seq": 1}})
    delta = orjson.dumps({"topic": "orderbook.50.BTCUSDT", "ts": 1786310900100, "type": "delta",
                          "data": {"s": "BTCUSDT", "b": [["65000", "2"]], "a": [], "u": 2, "seq": 2}})
    timeline = [(t(i), f) for i, f in enumerate(frames)] + [(t(len(frames)), restart), (t(len(frames) + 1), delta)]
    archive = write_archive(tmp_path / "archive", rows_of("bybit", timeline))
    times = samples(t(len(frames)) - STEP, t(len(frames) + 2), HALF)
    table = replay(archive, "bybit", "BTCUSDT", times[0], times[-1], every_us=HALF, depth=2)
    assert_rows(table, expected_rows("bybit", "BTCUSDT", timeline, times, 2), "bybit", "BTCUSDT")
    last = table.to_pylist()[-1]
    assert (last["bid_price_0"], last["bid_size_0"], last["ask_price_0"], last["bid_price_1"]) == (65000.0, 2.0, 65001.0, None)
    assert last["exchange_sequence_id"] == "2" and table.schema.metadata[b"chain_breaks"] == b"0"


# -- Coinbase level2: deltas without ids; a disconnect drops the book until a snapshot ------------

def test_coinbase_disconnect_makes_the_book_unknown_until_the_next_snapshot(tmp_path):
    lines = [line for line in fixture_lines("coinbase/level2.jsonl") if b'"SKL-USD"' in line]
    truth = RefBook()
    for frame in lines[:201]:
        ref_apply("coinbase", truth, frame)
    bids, asks = truth.top(100_000)
    snapshot = orjson.dumps({"type": "snapshot", "product_id": "SKL-USD", "bids": [list(b) for b in bids],
                             "asks": [list(a) for a in asks]})
    archived = [(t(i), f) for i, f in enumerate(lines) if not 100 <= i < 120 and i != 200]
    archived.append((t(200), snapshot))
    archived.sort(key=lambda item: item[0])
    gaps = [gap("disconnect", "coinbase", "SKL-USD", t(100), t(120))]
    archive = write_archive(tmp_path / "archive", rows_of("coinbase", archived), gaps)
    times = samples(T0, t(len(lines)), STEP)
    table = replay(archive, "coinbase", "SKL-USD", T0, times[-1], every_us=STEP, depth=10)
    # not only during the outage: the deltas after it cannot rebuild what was missed
    expected = expected_rows("coinbase", "SKL-USD", archived, times, 10, unknown=[(t(100), t(200))])
    assert_rows(table, expected, "coinbase", "SKL-USD")
    assert any(r["valid"] for r in table.to_pylist() if r["timestamp"] >= t(200))


# -- snapshot feeds: the book is the latest snapshot ----------------------------------------------

def test_upbit_book_is_the_latest_snapshot_and_unknown_during_a_disconnect(tmp_path):
    lines = fixture_lines("upbit/orderbook.jsonl")
    lamb = [line for line in lines if b'"KRW-LAMB"' in line]
    others = [line for line in lines if b'"KRW-LAMB"' not in line]
    archived = [(t(i), f) for i, f in enumerate(lamb) if not 20 <= i < 25]
    # a disconnect (nothing stored), and a gap row over an interval that still has messages: the
    # gaps table is the authority, the samples inside it are unknown all the same
    gaps = [gap("disconnect", "upbit", "KRW-LAMB", t(20) - HALF, t(25)), gap("gap", "upbit", "KRW-LAMB", t(40), t(44))]
    archive = write_archive(tmp_path / "archive", rows_of("upbit", archived + [(t(i), f) for i, f in enumerate(others)]), gaps)
    times = samples(T0, t(len(lamb)), HALF)
    table = replay(archive, "upbit", "KRW-LAMB", T0, times[-1], every_us=HALF, depth=15)
    expected = expected_rows("upbit", "KRW-LAMB", archived, times, 15, unknown=[(t(20) - HALF, t(25)), (t(40), t(44))])
    assert_rows(table, expected, "upbit", "KRW-LAMB")
    assert table.to_pylist()[-1]["valid"] and table.to_pylist()[-1]["bid_price_14"] is not None


def test_binance_late_stale_snapshot_is_skipped(tmp_path):
    def frame(update_id: int, bid: str) -> bytes:
        return orjson.dumps({"stream": "btcusdt@depth20@100ms",
                             "data": {"lastUpdateId": update_id, "bids": [[bid, "1.5"], ["0.0020", "3"]], "asks": [["0.0026", "100"]]}})

    frames = [frame(160, "0.0024"), frame(170, "0.0023"), frame(180, "0.0025"), frame(190, "0.0022")]
    received = [t(0), t(2), t(1), t(3)]  # 170 arrived after 180
    archive = write_archive(tmp_path / "archive", rows_of("binance", list(zip(received, frames))))
    table = replay(archive, "binance", "BTC/USDT", T0, t(3), every_us=STEP, depth=2)
    got = [(r["timestamp"], r["valid"], r["bid_price_0"], r["exchange_sequence_id"]) for r in table.to_pylist()]
    assert got == [(T0, False, None, None), (t(0), True, 0.0024, "160"), (t(1), True, 0.0025, "180"),
                   (t(2), True, 0.0025, "180"), (t(3), True, 0.0022, "190")]
    assert table.schema.metadata[b"stale_skipped"] == b"1"
    assert table.column_names[:7] == ["timestamp", "exchange", "symbol", "bid_price_0", "bid_price_1", "bid_size_0", "bid_size_1"]
    assert table.column_names[-2:] == ["exchange_sequence_id", "valid"]


# -- the rest of the interface -------------------------------------------------------------------

def test_a_connection_with_the_archive_views_works_like_the_folder(okx_all_instruments):
    con = archive_views.connect(archive_url=str(okx_all_instruments))
    a = replay(con, "okx", "BTC-USDT", T0, t(30), every_us=STEP)
    b = replay(okx_all_instruments, "okx", "BTC-USDT", T0, t(30), every_us=STEP)
    assert a.equals(b) and a.schema.metadata == b.schema.metadata


def test_a_stream_with_no_rows_gives_unknown_samples(okx_all_instruments):
    table = replay(okx_all_instruments, "okx", "ETH-USDT", T0, T0 + STEP, every_us=HALF, depth=2)
    assert table.column("valid").to_pylist() == [False, False, False]
    assert table.schema.metadata[b"messages"] == b"0"


@pytest.mark.parametrize("text, expected", [
    (T0_ISO, T0), ("2026-11-25T14:00:00+00:00", T0), ("2026-11-25T15:00:00+01:00", T0), ("2026-11-25 14:00:00", T0),
    ("2026-11-25T14:00:00.25Z", T0 + 250_000), ("2026-11-25T14:00:00.000001Z", T0 + 1), (str(T0), T0), (T0, T0),
    ("2026-11-25", T0 - 14 * 3600 * 1_000_000),
])
def test_times_iso_or_microseconds(text, expected):
    assert to_us(text) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"start_us": T0, "end_us": T0 - 1, "every_us": 1}, "after"),
    ({"start_us": T0, "end_us": T0 + 10, "every_us": 0}, "every_us"),
    ({"start_us": T0, "end_us": T0 + 10, "every_us": 1, "at_us": T0}, "not both"),
    ({"start_us": T0, "end_us": T0 + 10**12, "every_us": 1}, "samples"),
    ({"at_us": "yesterday"}, "not a time"),
    ({"at_us": T0, "depth": 0}, "depth"),
    ({"start_us": T0}, "start_us and end_us"),
])
def test_bad_arguments_are_refused(okx_all_instruments, kwargs, message):
    with pytest.raises(ValueError, match=message):
        replay(okx_all_instruments, "okx", "BTC-USDT", **kwargs)


def test_unknown_exchange_is_refused(okx_all_instruments):
    with pytest.raises(ValueError, match="unknown exchange"):
        replay(okx_all_instruments, "kraken", "BTC-USD", at_us=T0)


def test_an_unreadable_row_makes_the_book_unknown_until_the_next_snapshot(tmp_path):
    frames = bybit_frames()[:80]
    rows = rows_of("bybit", [(t(i), f) for i, f in enumerate(frames)])
    rows[60]["data"] = rows[60]["data"][:50]  # cut short
    archive = write_archive(tmp_path / "archive", rows)
    times = samples(T0, t(len(frames)), STEP)
    table = replay(archive, "bybit", "BTCUSDT", T0, times[-1], every_us=STEP, depth=3)
    assert table.schema.metadata[b"decode_errors"] == b"1"
    timeline = [(t(i), f) for i, f in enumerate(frames)]
    assert_rows(table, expected_rows("bybit", "BTCUSDT", timeline, times, 3, unknown=[(t(60), t(len(frames)) + 1)]), "bybit", "BTCUSDT")


def test_output_built_in_batches_is_the_same_table(okx_all_instruments, monkeypatch):
    whole = replay(okx_all_instruments, "okx", "BTC-USDT", T0, t(40), every_us=HALF // 5)
    monkeypatch.setattr("pipeline.books.ROWS_PER_BATCH", 7)
    batched = replay(okx_all_instruments, "okx", "BTC-USDT", T0, t(40), every_us=HALF // 5)
    assert batched.column("timestamp").num_chunks > 1
    assert batched.equals(whole) and batched.schema.metadata == whole.schema.metadata
