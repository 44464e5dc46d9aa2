"""structlog set-up: JSON lines by default, readable console output under `make run`."""

from __future__ import annotations

import logging
import os
import sys
import typing

import structlog

__all__ = ["configure_logging"]


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was configured (a caller that
    swaps it and closes its own, like a test capturing output, leaves later lines a working stream)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
        logger_factory=structlog.WriteLoggerFactory(file=typing.cast(typing.TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(actor=actor)
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)
