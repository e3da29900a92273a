"""loguru set-up shared by every stage: readable lines on stdout, JSON lines in LOG_DIR.

The file rotates at midnight and files older than LOG_RETENTION_DAYS are deleted; loguru does both.
"""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger


def setup(stage: str, level: str = "info", log_dir: str = "logs", retention_days: int = 1) -> None:
    logger.remove()
    logger.configure(extra={"stage": stage})
    logger.add(
        sys.stdout,
        level=level.upper(),
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[stage]} | {message}",
        backtrace=False,
        diagnose=False,
    )
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    logger.add(
        str(Path(log_dir) / f"{stage}.{{time:YYYY-MM-DD}}.jsonl"),
        level=level.upper(),
        serialize=True,
        rotation="00:00",
        retention=f"{max(retention_days, 1)} days",
        enqueue=False,
        backtrace=False,
        diagnose=False,
    )
