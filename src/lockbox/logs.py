"""JSON logs through structlog. Lines carry event names, ids and types, never message content."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks quote local values and can carry PHI: log the exception type only.
            _drop_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log would write every URL and client address.
    logging.getLogger("uvicorn.access").disabled = True


def _drop_exc_info(_: object, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    exc = event.pop("exc_info", None)
    if exc:
        exc_type = exc[0] if isinstance(exc, tuple) else type(exc)
        event["exception_type"] = getattr(exc_type, "__name__", "Exception")
    return event
