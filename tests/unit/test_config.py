"""pipeline/config.py: every setting's default, parsing, the SPEC's validation rules, and that each
option also reads its environment variable."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from pipeline import config as cfg
from pipeline.config import ConfigError, SETTINGS, load

# Every setting and the value its default parses to. The SPEC names most of them ("same names, same
# defaults"); a setting added to config.py without a row here fails test_every_setting_has_a_row.
DEFAULTS = {
    "EXCHANGE": "binance",
    "SYMBOLS": (),
    "FEEDS": ("orderbook",),
    "WS_URL": "",
    "BATCH_INTERVAL": 5.0,
    "WS_MESSAGE_TIMEOUT_SECS": 30.0,
    "WS_INITIAL_RETRY_DELAY_SECS": 1.0,
    "WS_MAX_RETRY_DELAY_SECS": 60.0,
    "ARCHIVE_INTERVAL_SECS": 3600.0,
    "BUCKET_NAME": "",
    "ARCHIVE_URL": "./archive",
    "HOME_SERVER_NAME": "",
    "AWS_REGION": "us-east-1",
    "S3_ENDPOINT_URL": "",
    "METRICS_PORT": 9090,
    "METRICS_HOST": "127.0.0.1",
    "LOG_LEVEL": "info",
    "LOG_RETENTION_DAYS": 1,
    "LOG_DIR": "logs",
    "DATA_DIR": "data",
    "ZMQ_PUSH": "",
    "ZMQ_PULL": "",
    "ZMQ_HWM": 1000,
    "ZMQ_CURVE_SECRET_KEY_FILE": "",
    "ZMQ_CURVE_SERVER_KEY_FILE": "",
    "ZMQ_CURVE_AUTHORIZED_KEYS": "",
    "BOOK_RESYNC_MIN_INTERVAL_SECS": 5.0,
    "VERIFY_BOOK_CHECKSUM": True,
    "STREAM_STALE_SECS": 0.0,
    "MAX_FRAME_BYTES": 16 * 1024 * 1024,
    "SEQUENCE_MAX_STREAMS": 10_000,
    "DEDUP_WINDOW_SECS": 3600.0,
    "SEAL_ON_EXIT": False,
    "DUCKDB_MEMORY_LIMIT": "1GB",
}

NUMBERS = sorted(v for v, s in SETTINGS.items() if s.parse in (cfg._INT, cfg._FLOAT))
INTS = sorted(v for v, s in SETTINGS.items() if s.parse is cfg._INT)
FLAGS = sorted(v for v, s in SETTINGS.items() if s.parse is cfg._flag)

# The four settings the SPEC's cross-rules talk about, at their defaults, as an ingest would load them.
INGEST_TIMING = ("BATCH_INTERVAL", "WS_MESSAGE_TIMEOUT_SECS", "WS_INITIAL_RETRY_DELAY_SECS", "WS_MAX_RETRY_DELAY_SECS")


def raw(**values: str | None) -> dict[str, str | None]:
    """Raw option values as a command receives them: lowercase keys, strings or None (not given)."""
    return {name.lower(): value for name, value in values.items()}


def load_error(values: dict[str, str | None]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(values)
    return info.value


# -- defaults

def test_every_setting_has_a_row_in_the_defaults_table():
    assert set(SETTINGS) == set(DEFAULTS)


@pytest.mark.parametrize("variable, expected", sorted(DEFAULTS.items()))
def test_a_setting_not_given_takes_its_default(variable, expected):
    value = getattr(load({variable.lower(): None}), variable.lower())
    assert value == expected
    assert type(value) is type(expected)


def test_all_defaults_together_pass_every_rule():
    conf = load({variable.lower(): None for variable in SETTINGS})
    assert conf.batch_interval == 5.0 and conf.archive_interval_secs == 3600.0


def test_config_attribute_of_a_setting_not_loaded_is_an_attribute_error():
    with pytest.raises(AttributeError):
        load({}).batch_interval


def test_a_value_that_is_not_a_setting_passes_through_untouched():
    assert load({"once": True}).once is True


# -- the four SPEC rules, at and across their boundaries

RULES = [
    # (case id, values, variable named in the error or None when valid)
    ("timeout equal to batch interval", dict(BATCH_INTERVAL="5", WS_MESSAGE_TIMEOUT_SECS="5"), None),
    ("timeout just below batch interval", dict(BATCH_INTERVAL="5", WS_MESSAGE_TIMEOUT_SECS="4.999"), "WS_MESSAGE_TIMEOUT_SECS"),
    ("batch interval above default timeout", dict(BATCH_INTERVAL="31"), "WS_MESSAGE_TIMEOUT_SECS"),
    ("archive interval 60", dict(ARCHIVE_INTERVAL_SECS="60"), None),
    ("archive interval 59.999", dict(ARCHIVE_INTERVAL_SECS="59.999"), "ARCHIVE_INTERVAL_SECS"),
    ("archive interval 0", dict(ARCHIVE_INTERVAL_SECS="0"), "ARCHIVE_INTERVAL_SECS"),
    ("archive interval 86400", dict(ARCHIVE_INTERVAL_SECS="86400"), None),
    ("archive interval 86400.001", dict(ARCHIVE_INTERVAL_SECS="86400.001"), "ARCHIVE_INTERVAL_SECS"),
    ("initial delay just below timeout", dict(WS_INITIAL_RETRY_DELAY_SECS="29.999", WS_MAX_RETRY_DELAY_SECS="60"), None),
    ("initial delay equal to timeout", dict(WS_INITIAL_RETRY_DELAY_SECS="30", WS_MAX_RETRY_DELAY_SECS="60"), "WS_INITIAL_RETRY_DELAY_SECS"),
    ("initial delay above timeout", dict(WS_INITIAL_RETRY_DELAY_SECS="45", WS_MAX_RETRY_DELAY_SECS="60"), "WS_INITIAL_RETRY_DELAY_SECS"),
    ("max delay equal to initial", dict(WS_INITIAL_RETRY_DELAY_SECS="2", WS_MAX_RETRY_DELAY_SECS="2"), None),
    ("max delay just below initial", dict(WS_INITIAL_RETRY_DELAY_SECS="2", WS_MAX_RETRY_DELAY_SECS="1.999"), "WS_MAX_RETRY_DELAY_SECS"),
    ("max delay 0.5 with default initial", dict(WS_MAX_RETRY_DELAY_SECS="0.5"), "WS_MAX_RETRY_DELAY_SECS"),
    ("batch interval 0", dict(BATCH_INTERVAL="0"), "BATCH_INTERVAL"),
    ("batch interval tiny", dict(BATCH_INTERVAL="0.001"), None),
]


@pytest.mark.parametrize("values, variable", [(v, e) for _, v, e in RULES], ids=[c for c, _, _ in RULES])
def test_cross_rules_between_settings(values, variable):
    given = {name.lower(): None for name in INGEST_TIMING + ("ARCHIVE_INTERVAL_SECS",)}
    given.update(raw(**values))
    if variable is None:
        conf = load(given)
        for name, text in values.items():
            assert getattr(conf, name.lower()) == float(text)
    else:
        error = load_error(given)
        assert error.variable == variable
        assert str(error).startswith(variable + ": ")


@pytest.mark.parametrize("values", [
    dict(BATCH_INTERVAL="100"),  # persist has no WS_MESSAGE_TIMEOUT_SECS to compare with
    dict(WS_MESSAGE_TIMEOUT_SECS="0.5"),  # no BATCH_INTERVAL, no initial delay given to this command
    dict(WS_MAX_RETRY_DELAY_SECS="0.1"),  # no initial delay loaded
], ids=["batch-alone", "timeout-alone", "max-delay-alone"])
def test_a_rule_applies_only_when_the_command_loads_both_of_its_settings(values):
    load(raw(**values))


# -- malformed numbers

MALFORMED = ["abc", "", " ", "1,5", "0x10", "5s", "--1", "1..2", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1", "-0.5"]


@pytest.mark.parametrize("text", MALFORMED)
@pytest.mark.parametrize("variable", NUMBERS)
def test_a_malformed_number_is_one_error_naming_the_variable(variable, text):
    error = load_error({variable.lower(): text})
    assert error.variable == variable
    message = str(error)
    assert message.startswith(variable + ": ") and "\n" not in message
    assert repr(text) in message  # the operator sees what was given


@pytest.mark.parametrize("text, problem", [
    ("abc", "must be a number"),
    ("nan", "must be a finite number"),
    ("inf", "must be a finite number"),
    ("1e400", "must be a finite number"),  # overflows to inf
    ("-1", "must not be negative"),
])
def test_a_malformed_float_says_what_is_wrong(text, problem):
    assert problem in str(load_error(raw(BATCH_INTERVAL=text)))


@pytest.mark.parametrize("text", ["1.5", "1e3", "9090.0"])
@pytest.mark.parametrize("variable", INTS)
def test_an_integer_setting_refuses_a_fraction_or_exponent(variable, text):
    assert load_error({variable.lower(): text}).variable == variable


@pytest.mark.parametrize("text, expected", [("0", 0.0), ("7", 7.0), (" 2.5 ", 2.5), ("1e3", 1000.0), ("-0", 0.0)])
def test_well_formed_floats_parse(text, expected):
    assert load(raw(BOOK_RESYNC_MIN_INTERVAL_SECS=text)).book_resync_min_interval_secs == expected


@pytest.mark.parametrize("variable, text, ok", [
    ("METRICS_PORT", "0", True), ("METRICS_PORT", "65535", True), ("METRICS_PORT", "65536", False),
    ("ZMQ_HWM", "1", True), ("ZMQ_HWM", "0", False),
    ("LOG_LEVEL", "debug", True), ("LOG_LEVEL", "WARNING", True), ("LOG_LEVEL", "verbose", False),
])
def test_range_and_choice_checks(variable, text, ok):
    if ok:
        load({variable.lower(): text})
    else:
        assert load_error({variable.lower(): text}).variable == variable


# -- flags and lists

@pytest.mark.parametrize("text, expected", [
    ("on", True), ("ON", True), (" on ", True), ("1", True), ("true", True), ("True", True), ("yes", True),
    ("off", False), ("OFF", False), ("0", False), ("false", False), ("no", False), ("", False),
])
@pytest.mark.parametrize("variable", FLAGS)
def test_flags_read_the_usual_spellings(variable, text, expected):
    assert getattr(load({variable.lower(): text}), variable.lower()) is expected


@pytest.mark.parametrize("text", ["maybe", "2", "enabled", "o n"])
@pytest.mark.parametrize("variable", FLAGS)
def test_a_flag_that_is_neither_on_nor_off_is_an_error_naming_it(variable, text):
    error = load_error({variable.lower(): text})
    assert error.variable == variable and repr(text) in str(error)


@pytest.mark.parametrize("text, expected", [
    ("btcusdt", ("btcusdt",)),
    ("btcusdt, ethusdt ,", ("btcusdt", "ethusdt")),
    (",,", ()),
])
def test_lists_are_comma_separated_and_trimmed(text, expected):
    assert load(raw(SYMBOLS=text)).symbols == expected


# -- options and environment variables, through click

def _probe_command():
    seen = {}

    @click.command()
    @cfg.options("BATCH_INTERVAL", "ZMQ_PUSH", "VERIFY_BOOK_CHECKSUM")
    def probe(**values):
        seen.update(load(values).values)

    return probe, seen


@pytest.mark.parametrize("args, env, expected", [
    ([], {}, {"batch_interval": 5.0, "zmq_push": "", "verify_book_checksum": True}),
    ([], {"BATCH_INTERVAL": "7", "ZMQ_PUSH": "tcp://127.0.0.1:1", "VERIFY_BOOK_CHECKSUM": "off"},
     {"batch_interval": 7.0, "zmq_push": "tcp://127.0.0.1:1", "verify_book_checksum": False}),
    (["--batch-interval", "8", "--push", "ipc:///tmp/x", "--verify-book-checksum", "off"], {},
     {"batch_interval": 8.0, "zmq_push": "ipc:///tmp/x", "verify_book_checksum": False}),
    (["--batch-interval", "9"], {"BATCH_INTERVAL": "7"}, {"batch_interval": 9.0}),  # the option wins
], ids=["defaults", "environment", "options", "option-over-environment"])
def test_every_option_also_reads_its_environment_variable(args, env, expected, monkeypatch):
    for variable in SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    probe, seen = _probe_command()
    result = CliRunner().invoke(probe, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {k: seen[k] for k in expected} == expected


def test_option_names_follow_the_variable_names_except_the_zeromq_ones():
    for variable, setting in SETTINGS.items():
        if variable.startswith("ZMQ_"):
            continue
        assert setting.option == "--" + variable.lower().replace("_", "-")
    assert (SETTINGS["ZMQ_PUSH"].option, SETTINGS["ZMQ_PULL"].option, SETTINGS["ZMQ_HWM"].option) == ("--push", "--pull", "--hwm")


def test_finite_check_is_not_fooled_by_nan_comparisons():
    # NaN compares false with everything, so without the finite check it would pass every rule
    assert load_error(raw(ARCHIVE_INTERVAL_SECS="nan")).variable == "ARCHIVE_INTERVAL_SECS"
    assert load_error(raw(WS_MESSAGE_TIMEOUT_SECS="nan", BATCH_INTERVAL=None)).variable == "WS_MESSAGE_TIMEOUT_SECS"
