"""structlog set-up: JSON lines by default, readable console output under `make run`."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(actor: str, *, console: bool | None = None, level: str | None = None) -> None:
    """Every line carries `actor`; handlers bind tenant, correlation_id and run_id per message."""
    if console is None:
        console = os.environ.get("AGENTBUS_LOG_FORMAT", "json") == "console"
    lvl = logging.getLevelNamesMapping()[(level or os.environ.get("AGENTBUS_LOG_LEVEL", "INFO")).upper()]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(actor=actor)
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)
