"""A real Prometheus server scrapes a real ``collector check`` on loopback, with the shipped config.

The check stage gets records over ZeroMQ as ingest would send them; Prometheus (Debian's
``/usr/bin/prometheus``, 1 s scrape and rule interval) scrapes it with the ``collector-check`` job of
docker/prometheus.yml (only the target address changed) and evaluates docker/alerts.yml. The tests
read the metrics back through Prometheus's HTTP API, run every dashboard query against it, and watch
a gap alert go pending on the series the stage really exports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
import zmq

from tests.conftest import free_port, wait_for
from pipeline.records import Header, encode_records, now_us

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PROMETHEUS = "/usr/bin/prometheus"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$exchange": ".*"}
STREAM = {"exchange": "binance", "symbol": "btcusdt", "data_type": "trade"}
LATENCY_US = 5_000  # exchange time -> collector time of every record sent


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stop(process: subprocess.Popen, grace: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no output)"


class Stage:
    def __init__(self, process: subprocess.Popen, pull: str, metrics_port: int, output: Path):
        self.process, self.pull, self.metrics_port, self.output = process, pull, metrics_port, output


@pytest.fixture(scope="module")
def check_stage(tmp_path_factory):
    """``collector check`` on loopback ports; a PULL socket stands in for persist."""
    folder = tmp_path_factory.mktemp("check")
    pull, push, metrics_port = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", free_port())
    context = zmq.Context()
    persist = context.socket(zmq.PULL)
    persist.bind(push)
    output = folder / "output.txt"
    env = os.environ | {"LOG_DIR": str(folder / "logs"), "METRICS_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.cli", "check", "--pull", pull, "--push", push, "--metrics-port", str(metrics_port)],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        def ready() -> bool:
            assert process.poll() is None, f"collector check exited with {process.returncode}:\n{tail(output)}"
            return http_get(f"http://127.0.0.1:{metrics_port}/ready")[0] == 200

        wait_for(ready, timeout=30, what="collector check /ready")
        yield Stage(process, pull, metrics_port, output)
    finally:
        stop(process, grace=15)
        persist.close(linger=0)
        context.term()


@pytest.fixture(scope="module")
def prometheus(check_stage, tmp_path_factory):
    """Prometheus scraping the check stage with the shipped job, evaluating the shipped alert rules."""
    assert os.access(PROMETHEUS, os.X_OK), f"{PROMETHEUS} is missing: apt-get install -y prometheus"
    folder = tmp_path_factory.mktemp("prometheus")
    shipped = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = [job for job in shipped["scrape_configs"] if job["job_name"] == "collector-check"]
    (static,) = job["static_configs"]
    static["targets"] = [f"127.0.0.1:{check_stage.metrics_port}"]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DOCKER / rule_file) for rule_file in shipped["rule_files"]],
        "scrape_configs": [job],
    }
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    output = folder / "output.txt"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            cwd=folder, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        api = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited with {process.returncode}:\n{tail(output)}"
            return http_get(f"{api}/-/ready")[0] == 200

        wait_for(ready, timeout=30, what="prometheus /-/ready")
        yield Prometheus(api)
    finally:
        stop(process, grace=10)


class Prometheus:
    def __init__(self, api: str):
        self.api = api

    def query(self, expr: str) -> list[dict]:
        """The instant vector (or scalar) of ``expr``; a PromQL error fails the test with the message."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.api}/api/v1/query", data=body, timeout=5) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
            if answer.get("errorType") == "bad_data":
                pytest.fail(f"Prometheus rejects {expr!r}: {answer.get('error')}")
            raise
        assert answer["status"] == "success", answer
        data = answer["data"]
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"metric": {}, "value": data["result"]}]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def rules(self) -> list[dict]:
        status, body = http_get(f"{self.api}/api/v1/rules")
        assert status == 200
        return [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]


def send_trades(endpoint: str, ids: list[int], prev: dict[int, int] | None = None) -> None:
    """Binance trade records as ingest pushes them: contiguous ids, ``prev`` = id - 1 unless given."""
    headers, datas = [], []
    for trade_id in ids:
        data = json.dumps({"e": "trade", "s": "BTCUSDT", "t": trade_id}).encode()
        collected = now_us()
        headers.append(tuple(Header(
            STREAM["exchange"], STREAM["symbol"], STREAM["data_type"], str(trade_id), collected, collected - LATENCY_US,
            trade_id, (prev or {}).get(trade_id, trade_id - 1), False, "test-epoch", len(data), len(headers) + 1,
        )))
        datas.append(data)
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.connect(endpoint)
    try:
        socket.send_multipart(encode_records(headers, datas))
    finally:
        socket.close(linger=5000)
        context.term()


def selector(name: str, **labels: str) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@pytest.fixture(scope="module")
def traffic(check_stage, prometheus):
    """Two batches of trades, scraped apart (so rates are non-zero), the second with a 4-id gap."""
    received = selector("collector_messages_received_total", job="collector-check", stage="check", **STREAM)
    wait_for(lambda: prometheus.value('up{job="collector-check"}') == 1.0, timeout=30, what="first scrape")
    send_trades(check_stage.pull, list(range(1, 11)))
    wait_for(lambda: prometheus.value(received) == 10.0, timeout=30, what="10 records counted by check, via Prometheus")
    send_trades(check_stage.pull, list(range(11, 21)) + [25])  # ids 21-24 never come
    wait_for(lambda: prometheus.value(received) == 21.0, timeout=30, what="21 records counted by check, via Prometheus")
    return received


def test_prometheus_reads_the_check_stage_metrics_through_its_http_api(check_stage, prometheus, traffic):
    (series,) = prometheus.query(traffic)
    assert series["metric"]["program"] == "check"  # the target label of the shipped job
    assert series["metric"]["instance"] == f"127.0.0.1:{check_stage.metrics_port}"
    started = prometheus.value('collector_start_timestamp_seconds{job="collector-check", stage="check"}')
    assert started is not None and abs(started - time.time()) < 300
    latency_count = selector("collector_latency_exchange_to_collector_ms_count", exchange="binance", data_type="trade")
    assert prometheus.value(latency_count) == 21.0
    gaps = selector("collector_sequence_gaps_total", **STREAM)
    wait_for(lambda: prometheus.value(gaps) == 1.0, timeout=30, what="the gap counted by check, via Prometheus")


def test_every_dashboard_query_is_valid_promql_and_the_check_panels_show_data(prometheus, traffic):
    board = json.loads((DOCKER / "grafana" / "dashboards" / "collector.json").read_text())
    panels = [p for top in board["panels"] for p in [top] + top.get("panels", [])]
    exprs = {}
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs[(panel["title"], target["refId"])] = expr
            prometheus.query(expr)  # fails the test on a PromQL error
    # Panels fed by the check stage: their queries return data once two scrapes saw the counters move.
    p50 = exprs[("Exchange → collector latency p50 / p99", "A")]
    p99 = exprs[("Exchange → collector latency p50 / p99", "B")]

    def latency_shown() -> bool:
        values = [prometheus.value(p50), prometheus.value(p99)]
        return all(v is not None and 0 < v <= 10 for v in values)  # every record took 5 ms

    wait_for(latency_shown, timeout=60, interval=0.5, what="latency p50/p99 panels to show 5 ms records")
    through = exprs[("Records/s through each stage", "A")]
    wait_for(lambda: any(r["metric"].get("stage") == "check" and float(r["value"][1]) > 0 for r in prometheus.query(through)),
             timeout=60, interval=0.5, what="records/s of the check stage")
    stages_up = exprs[("Stages up", "A")]
    assert [(r["metric"]["program"], r["value"][1]) for r in prometheus.query(stages_up)] == [("check", "1")]


def test_alert_rules_evaluate_cleanly_and_the_first_gap_of_a_stream_alerts(prometheus, traffic):
    gaps = selector("collector_sequence_gaps_total", **STREAM)
    wait_for(lambda: prometheus.value(gaps) == 1.0, timeout=30, what="the gap counted by check, via Prometheus")
    # The stream's gap series is created at its first gap, at 1: the rule must still see it.
    pending = selector("ALERTS", alertname="CollectorSequenceGaps", alertstate="pending", **STREAM)
    wait_for(lambda: prometheus.query(pending), timeout=30, interval=0.5, what="CollectorSequenceGaps pending")
    def evaluated_rules() -> list[dict]:
        rules = prometheus.rules()
        # never evaluated: lastEvaluation is Go's zero time, 0001-01-01T00:00:00Z
        return rules if rules and not any(rule["lastEvaluation"].startswith("0001") for rule in rules) else []

    rules = wait_for(evaluated_rules, timeout=30, what="every rule evaluated")
    shipped = [rule for group in yaml.safe_load((DOCKER / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    assert len(rules) == len(shipped), "Prometheus did not load every rule of alerts.yml"
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken
    # A healthy stage raises nothing else.
    firing_or_pending = {r["metric"]["alertname"] for r in prometheus.query("ALERTS")}
    assert firing_or_pending == {"CollectorSequenceGaps"}
