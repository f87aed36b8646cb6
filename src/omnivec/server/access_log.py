"""Structured access logs (``omnivec serve --log-format json``): one JSON object a request.

Why: log pipelines (Loki, Elasticsearch, CloudWatch) index fields, not uvicorn's text lines.
The app logs every ``/v1/*`` answer on the ``omnivec.access`` logger with its fields in
``extra={"access": {...}}``; :class:`JsonFormatter` writes them, with the time and level, as
one line. With the text format the same records print as short readable lines.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("omnivec.access")


def log_request(**fields: Any) -> None:
    """One request's record: request_id, route, dialect, status, items, tokens, seconds, ..."""
    ACCESS.info("%s %s %s", fields.get("route"), fields.get("status"), fields.get("request_id"),
                extra={"access": fields})


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message" | access fields}`` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                               "logger": record.name}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def install_json_logging(level: str = "info") -> None:
    """Route omnivec's and uvicorn's loggers to stderr as JSON lines (uvicorn's access log off)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("omnivec", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
