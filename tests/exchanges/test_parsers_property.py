"""No input makes an adapter's ``parse_safely`` raise, and every result is well formed.

For every registered adapter: arbitrary bytes, arbitrary JSON values (huge integers included), every
recorded frame of every exchange (each adapter sees the others' frames too), and real frames mutated
(a key deleted, a value replaced or given another type) give records with the right types, a control
message or an error - never an exception and never a half-typed record. ``parse`` itself may raise
on garbage, but must not hang on deeply nested input.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.exchanges import REGISTRY
from tests.conftest import FIXTURES, fixture_lines
from tests.exchanges.expect import check_parsed

ADAPTERS = list(REGISTRY.values())
SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

FIELD_NAMES = [
    # every key an adapter reads, so random objects reach the adapters' deeper branches
    "stream", "data", "e", "E", "t", "s", "lastUpdateId", "bids", "asks", "result", "id", "code", "msg",
    "type", "product_id", "trade_id", "time", "changes", "message", "reason",
    "ty", "cd", "tms", "ttms", "sid", "obu", "status", "error", "name", "timestamp", "trade_timestamp",
    "sequential_id", "orderbook_units", "arg", "channel", "instId", "tradeId", "ts", "count", "action",
    "seqId", "prevSeqId", "event", "topic", "u", "b", "a", "i", "T", "op", "success", "ret_msg",
]
CHANNELS = ["trade", "depth20@100ms", "match", "last_match", "l2update", "snapshot", "trade", "orderbook",
            "trades", "books", "publicTrade", "orderbook.50", "update", "delta", "subscribe", "error", "ping"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.integers(min_value=-(2**80), max_value=-(2**62))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(CHANNELS)
    | st.from_regex(r"-?[0-9]{1,22}", fullmatch=True)
    | st.sampled_from(["2021-04-17T16:43:37.075351Z", "2021-04-17T16:43:37Z", "2021-02-30T25:61:61.000000Z", "KRW-BTC",
                       "btcusdt@trade", "publicTrade.BTCUSDT", "orderbook.50.BTCUSDT", "-1", ""])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=6),
    max_leaves=25,
)


def _encode(value: object) -> bytes:
    """JSON text as an exchange could send it (stdlib json: integers of any size)."""
    return json.dumps(value).encode()


def _all_frames() -> list[bytes]:
    files = sorted(Path(FIXTURES).rglob("*.jsonl"))
    assert files, f"no fixtures under {FIXTURES}"
    return [line for path in files for line in fixture_lines(str(path.relative_to(FIXTURES)))]


ALL_FRAMES = _all_frames()
# A few frames of every kind for mutation (big book snapshots are slow to re-encode many times).
SEEDS = [line for line in ALL_FRAMES if len(line) < 20_000][::7]


def _check_all(frame: bytes) -> None:
    for adapter in ADAPTERS:
        check_parsed(adapter.parse_safely(frame))


@SETTINGS
@given(st.binary(max_size=300))
def test_no_byte_string_makes_parse_safely_raise(frame):
    _check_all(frame)


@SETTINGS
@given(json_values)
def test_no_json_value_makes_parse_safely_raise(value):
    _check_all(_encode(value))


@SETTINGS
@given(
    st.sampled_from(["stream", "type", "ty", "arg", "topic", "event", "op"]),
    st.sampled_from(CHANNELS),
    json_values,
    json_values,
)
def test_no_near_valid_envelope_makes_parse_safely_raise(key, channel, payload, extra):
    """Envelopes each adapter recognises, filled with arbitrary values."""
    frames = [
        {key: channel, "data": payload, "x": extra},
        {"stream": f"btcusdt@{channel}", "data": payload},
        {"arg": {"channel": channel, "instId": "BTC-USDT"}, "action": extra, "data": [payload]},
        {"topic": f"{channel}.BTCUSDT", "ts": extra, "type": "snapshot", "data": payload},
        {"ty": channel, "cd": "KRW-BTC", "tms": extra, "ttms": extra, "sid": payload, "obu": payload},
        {"type": channel, "product_id": "BTC-USD", "trade_id": payload, "time": extra, "changes": payload},
    ]
    for frame in frames:
        _check_all(_encode(frame))


def _paths(node: object, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            found += _paths(value, path + (index,))
    return found


def _retyped(value: object) -> object:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value) if value % 2 else float(value)
    if isinstance(value, float):
        return str(value)
    if isinstance(value, str):
        return int(value) if value.lstrip("-").isdigit() else [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


@SETTINGS
@given(st.data())
def test_no_mutation_of_a_real_frame_makes_parse_safely_raise(data):
    doc = json.loads(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        operation = data.draw(st.sampled_from(["delete", "replace", "retype"]))
        if not path:
            doc = data.draw(json_values) if operation == "replace" else _retyped(doc)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if operation == "delete":
            del parent[last]
        elif operation == "replace":
            parent[last] = data.draw(json_values)
        else:
            parent[last] = _retyped(parent[last])
    _check_all(_encode(doc))


def test_every_recorded_frame_of_every_exchange_is_handled_by_every_adapter():
    assert len(ALL_FRAMES) > 2000
    for frame in ALL_FRAMES:
        _check_all(frame)


def test_a_field_of_the_wrong_type_never_becomes_a_record():
    """Each id/time field of a real frame, given another type, makes that frame malformed (or not data)."""
    checked = 0
    for adapter in ADAPTERS:
        own = [line for line in ALL_FRAMES if adapter.parse_safely(line).records][:40]
        for line in own:
            doc = json.loads(line)
            for path in _paths(doc):
                if not path or path[-1] not in ("t", "E", "trade_id", "time", "sid", "ttms", "tms", "tradeId", "ts",
                                                 "count", "u", "i", "T", "lastUpdateId", "seqId", "prevSeqId"):
                    continue
                mutated = copy.deepcopy(doc)
                parent = mutated
                for step in path[:-1]:
                    parent = parent[step]
                for wrong in ([parent[path[-1]]], {"v": 1}, None, 1.5, True):
                    parent[path[-1]] = wrong
                    parsed = adapter.parse_safely(_encode(mutated))
                    check_parsed(parsed)
                    # A field the adapter reads loses the record when its type is wrong; a field it does not
                    # read (Upbit trade ``tms``, Binance ``T``) may keep it, and then the record is unchanged.
                    if parsed.records:
                        original = adapter.parse(line).records
                        assert len(parsed.records) == len(original), (adapter.name, path, wrong)
                        for new, old in zip(parsed.records, original):
                            assert new[:2] + new[3:4] + new[5:] == old[:2] + old[3:4] + old[5:], (adapter.name, path, wrong)
                            if old.seq is not None:  # derived ids change with the bytes, exchange ids may not
                                assert new.exchange_sequence_id == old.exchange_sequence_id, (adapter.name, path, wrong)
                    checked += 1
    assert checked > 500


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
@pytest.mark.parametrize(
    "frame",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"[" * 100_000,
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"tradeId":"1","ts":"1","x":'
        + b"[" * 1000 + b"]" * 1000 + b"}]}",
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot","data":[{"i":"1","T":1,"x":'
        + b"[" * 1000 + b"]" * 1000 + b"}]}",
    ],
    ids=["deep-list", "deep-object", "unclosed", "deep-okx-trade", "deep-bybit-trade"],
)
def test_deep_nesting_does_not_hang(adapter, frame):
    start = time.monotonic()
    try:
        adapter.parse(frame)
    except Exception:  # noqa: BLE001 - raising on garbage is allowed; hanging or crashing is not
        pass
    check_parsed(adapter.parse_safely(frame))
    assert time.monotonic() - start < 5.0
