"""run: the whole pipeline on this machine, every stage its own process, under supervisord.

Renders the supervisord configuration from ``pipeline.topology`` (the shipped ``supervisord.conf`` is
the same rendering) into ``DATA_DIR/run/`` and replaces itself with supervisord, so Ctrl-C reaches
supervisord, which stops ingest first and persist after check, each within its budget.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import click
import orjson

from pipeline import config as cfg
from pipeline import topology


@click.command()
@cfg.options("DATA_DIR", "ARCHIVE_INTERVAL_SECS", "LOG_LEVEL")
@click.option("--simulate", is_flag=True, help="run against the built-in exchange simulators, offline")
@click.option("--exchanges", "names", default=",".join(topology.EXCHANGES), show_default=True,
              help="exchanges to record, comma separated")
def command(simulate: bool, names: str, **raw: str | None) -> None:
    """The whole pipeline under supervisord (Ctrl-C stops it cleanly)."""
    if simulate and raw.get("archive_interval_secs") is None:
        raw["archive_interval_secs"] = "60"  # a demo should reach the archive within minutes
    conf = cfg.load(raw)
    chosen = tuple(name.strip() for name in names.split(",") if name.strip())
    unknown = [name for name in chosen if name not in topology.EXCHANGES]
    if unknown or not chosen:
        raise cfg.ConfigError("EXCHANGE", f"unknown exchange(s) {', '.join(unknown) or '(none)'}")
    state_dir = Path(conf.data_dir).resolve() / "run"
    state_dir.mkdir(parents=True, exist_ok=True)
    collector = " ".join(shlex.quote(part) for part in (sys.executable, "-m", "stages.cli"))
    rendered = topology.render_supervisord(command=collector, simulate=simulate, state_dir=str(state_dir), exchanges=chosen)
    config_path = state_dir / "supervisord.conf"
    config_path.write_text(rendered)
    (state_dir / "stages.json").write_bytes(orjson.dumps(topology.health_endpoints(chosen), option=orjson.OPT_INDENT_2))
    os.environ["ARCHIVE_INTERVAL_SECS"] = str(int(conf.archive_interval_secs))
    os.environ.setdefault("DATA_DIR", conf.data_dir)
    click.echo(f"collector run: {len(chosen)} exchange(s){' (simulated)' if simulate else ''}; "
               f"supervisord config {config_path}; Ctrl-C stops everything")
    supervisord = shutil.which("supervisord")
    argv = [supervisord] if supervisord else [sys.executable, "-m", "supervisor.supervisord"]
    os.execv(argv[0], argv + ["-n", "-c", str(config_path)])
