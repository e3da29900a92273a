"""Every setting, declared once: its environment variable, its command-line option, default and parser.

Stages pick the settings they use with ``@options(...)``; click reads the option or the environment
variable as a string and ``load`` parses and validates everything, so a bad value always ends in one
line naming the variable (``ConfigError``), never in click's multi-line usage text or a traceback.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click


class ConfigError(Exception):
    """A setting that cannot be used; the message names the variable."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _number(kind: type) -> Callable[[str, str], Any]:
    def parse(variable: str, text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(variable, f"must be a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(variable, f"must be a finite number, got {text!r}")
        if value < 0:
            raise ConfigError(variable, f"must not be negative, got {text!r}")
        return value

    return parse


def _text(variable: str, text: str) -> str:
    return text


def _flag(variable: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(variable, f"must be on or off, got {text!r}")


def _csv(variable: str, text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# CURVE key settings: the file (or folder) is read and checked at load, so a stage given a bad key
# stops with one line before it binds or connects anything; the value stays the path.
def _curve_secret_file(variable: str, text: str) -> str:
    if text:
        from pipeline import curve

        curve.load_secret(variable, text)
    return text


def _curve_public_file(variable: str, text: str) -> str:
    if text:
        from pipeline import curve

        curve.load_public(variable, text)
    return text


def _curve_authorized(variable: str, text: str) -> str:
    if text:
        from pipeline import curve

        curve.load_authorized(variable, text)
    return text


@dataclasses.dataclass(frozen=True)
class Setting:
    variable: str
    default: str | None
    parse: Callable[[str, str], Any]
    help: str
    flag: str | None = None  # the option, where it is not the variable's name

    @property
    def option(self) -> str:
        return self.flag or "--" + self.variable.lower().replace("_", "-")

    @property
    def key(self) -> str:
        return self.variable.lower()


_INT, _FLOAT = _number(int), _number(float)

SETTINGS: dict[str, Setting] = {
    s.variable: s
    for s in [
        Setting("EXCHANGE", "binance", _text, "exchange to record"),
        Setting("SYMBOLS", "", _csv, "symbols, comma separated, in any common spelling"),
        Setting("FEEDS", "orderbook", _csv, "feeds: orderbook, trades"),
        Setting("WS_URL", "", _text, "replaces the exchange's base WebSocket endpoint"),
        Setting("BATCH_INTERVAL", "5", _FLOAT, "seconds between DuckDB batch inserts"),
        Setting("WS_MESSAGE_TIMEOUT_SECS", "30", _FLOAT, "reconnect after this long without a frame"),
        Setting("WS_INITIAL_RETRY_DELAY_SECS", "1", _FLOAT, "first reconnect delay"),
        Setting("WS_MAX_RETRY_DELAY_SECS", "60", _FLOAT, "longest reconnect delay"),
        Setting("ARCHIVE_INTERVAL_SECS", "3600", _FLOAT, "seconds between seals of DuckDB rows into Parquet"),
        Setting("BUCKET_NAME", "", _text, "S3 bucket; empty archives to ARCHIVE_URL"),
        Setting("ARCHIVE_URL", "./archive", _text, "local archive folder when BUCKET_NAME is empty"),
        Setting("HOME_SERVER_NAME", "", _text, "server level in archive keys"),
        Setting("AWS_REGION", "us-east-1", _text, "region of the bucket"),
        Setting("S3_ENDPOINT_URL", "", _text, "S3-compatible endpoint (MinIO, moto)"),
        Setting("METRICS_PORT", "9090", _INT, "port of /metrics, /health, /ready"),
        Setting("METRICS_HOST", "127.0.0.1", _text, "address the metrics server binds"),
        Setting("LOG_LEVEL", "info", _text, "debug, info, warning, error"),
        Setting("LOG_RETENTION_DAYS", "1", _INT, "days of JSON log files kept"),
        Setting("LOG_DIR", "logs", _text, "folder of the JSON-lines log files"),
        Setting("DATA_DIR", "data", _text, "DuckDB file and outbox"),
        Setting("ZMQ_PUSH", "", _text, "endpoint this stage pushes to (connects)", flag="--push"),
        Setting("ZMQ_PULL", "", _text, "endpoint this stage pulls from (binds)", flag="--pull"),
        Setting("ZMQ_HWM", "1000", _INT, "ZeroMQ high-water mark, in messages", flag="--hwm"),
        Setting("ZMQ_CURVE_SECRET_KEY_FILE", "", _curve_secret_file,
                "this end's CURVE secret key file (NAME.key_secret from collector keygen); empty: CURVE off"),
        Setting("ZMQ_CURVE_SERVER_KEY_FILE", "", _curve_public_file,
                "PUSH side: public key file (NAME.key) of the PULL it connects to; set: the push is CURVE-encrypted"),
        Setting("ZMQ_CURVE_AUTHORIZED_KEYS", "", _curve_authorized,
                "PULL side: folder of client public key files (*.key), or one such file; set: the pull admits only those"),
        Setting("BOOK_RESYNC_MIN_INTERVAL_SECS", "5", _FLOAT, "at most one book resync per symbol in this time"),
        Setting("VERIFY_BOOK_CHECKSUM", "on", _flag, "verify exchange book checksums where a feed has them"),
        Setting("STREAM_STALE_SECS", "0", _FLOAT, "a stream silent this long on a live connection is stale (0: each feed's own cadence)"),
        Setting("MAX_FRAME_BYTES", "16777216", _INT, "larger WebSocket frames are refused and counted"),
        Setting("SEQUENCE_MAX_STREAMS", "10000", _INT, "streams the sequence tracker remembers (LRU)"),
        Setting("DEDUP_WINDOW_SECS", "3600", _FLOAT, "how long persist remembers stored keys"),
        Setting("SEAL_ON_EXIT", "off", _flag, "persist seals its rows into the outbox on shutdown"),
        Setting("DUCKDB_MEMORY_LIMIT", "1GB", _text, "DuckDB memory limit of persist"),
    ]
}

DEFAULT_INGEST_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_PERSIST_ENDPOINT = "tcp://127.0.0.1:5556"


def options(*variables: str) -> Callable[[Callable], Callable]:
    """Adds one string option per setting; each also reads its environment variable."""

    def decorate(command: Callable) -> Callable:
        for variable in reversed(variables):
            setting = SETTINGS[variable]
            command = click.option(
                setting.option,
                setting.key,
                envvar=setting.variable,
                default=None,
                show_envvar=True,
                help=f"{setting.help} [default: {setting.default!r}]",
            )(command)
        return command

    return decorate


@dataclasses.dataclass(frozen=True)
class Config:
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def load(raw: dict[str, str | None]) -> Config:
    """Parses the raw option values a command received and checks the rules between them."""
    values: dict[str, Any] = {}
    for key, text in raw.items():
        setting = SETTINGS.get(key.upper())
        if setting is None:
            values[key] = text
            continue
        values[key] = setting.parse(setting.variable, setting.default if text is None else text)
    _check_rules(values)
    return Config(values)


def _check_rules(v: dict[str, Any]) -> None:
    if "ws_message_timeout_secs" in v and "batch_interval" in v:
        if v["ws_message_timeout_secs"] < v["batch_interval"]:
            raise ConfigError("WS_MESSAGE_TIMEOUT_SECS", "must be >= BATCH_INTERVAL")
    if "archive_interval_secs" in v and not 60 <= v["archive_interval_secs"] <= 86400:
        raise ConfigError("ARCHIVE_INTERVAL_SECS", "must be between 60 and 86400")
    if "ws_initial_retry_delay_secs" in v and "ws_message_timeout_secs" in v:
        if not v["ws_initial_retry_delay_secs"] < v["ws_message_timeout_secs"]:
            raise ConfigError("WS_INITIAL_RETRY_DELAY_SECS", "must be < WS_MESSAGE_TIMEOUT_SECS")
    if "ws_max_retry_delay_secs" in v and "ws_initial_retry_delay_secs" in v:
        if v["ws_max_retry_delay_secs"] < v["ws_initial_retry_delay_secs"]:
            raise ConfigError("WS_MAX_RETRY_DELAY_SECS", "must be >= WS_INITIAL_RETRY_DELAY_SECS")
    if "batch_interval" in v and v["batch_interval"] <= 0:
        raise ConfigError("BATCH_INTERVAL", "must be greater than 0")
    _check_curve(v)
    if "zmq_hwm" in v and v["zmq_hwm"] < 1:
        raise ConfigError("ZMQ_HWM", "must be at least 1")
    if "metrics_port" in v and not 0 <= v["metrics_port"] <= 65535:
        raise ConfigError("METRICS_PORT", "must be a port number (0-65535)")
    if "log_level" in v and v["log_level"].upper() not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("LOG_LEVEL", f"unknown level {v['log_level']!r}")


_CURVE_ROLES = ("ZMQ_CURVE_AUTHORIZED_KEYS", "ZMQ_CURVE_SERVER_KEY_FILE")  # PULL (server), PUSH (client)


def _check_curve(v: dict[str, Any]) -> None:
    """A role's key setting needs this end's secret key, and a secret key needs a role to be of use."""
    if "zmq_curve_secret_key_file" not in v:
        return
    secret = v["zmq_curve_secret_key_file"]
    roles = [role for role in _CURVE_ROLES if role.lower() in v]
    for role in roles:
        if v[role.lower()] and not secret:
            raise ConfigError("ZMQ_CURVE_SECRET_KEY_FILE", f"required when {role} is set")
    if secret and roles and not any(v[role.lower()] for role in roles):
        if len(roles) == 1:
            raise ConfigError(roles[0], "required when ZMQ_CURVE_SECRET_KEY_FILE is set")
        raise ConfigError("ZMQ_CURVE_SECRET_KEY_FILE", f"is set, but neither {' nor '.join(roles)} is "
                          "(a secret key alone turns no socket to CURVE)")
