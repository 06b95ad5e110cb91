"""Structured JSON logging: one logger setup for the API and the CLI. Context (request_id, user_id,
upload_id, job_id) rides in contextvars and is added to every line; secrets are never passed in."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
user_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)
upload_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("upload_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
CONTEXT = {"request_id": request_id, "user_id": user_id, "upload_id": upload_id, "job_id": job_id}
REDACT_KEYS = {"password", "token", "authorization", "cookie", "secret", "ntfy_auth", "api_key"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, var in CONTEXT.items():
            value = var.get()
            if value is not None:
                line[key] = value
        for key, value in (getattr(record, "fields", None) or {}).items():
            line[key] = "[redacted]" if key.lower() in REDACT_KEYS else value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


def setup(level: str = "INFO") -> None:
    root = logging.getLogger("dubbing")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def log(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, event, extra={"fields": fields})


audit_logger = logging.getLogger("dubbing.audit")


def audit(event: str, **fields) -> None:
    """Audit events: login, token creation, upload complete, job created."""
    log(audit_logger, event, audit=True, **fields)
