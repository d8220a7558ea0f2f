"""One logging configuration for a server process: text for a terminal, JSON lines for machines.

With `TOGETHER_LOG_FORMAT=json` every record (the platform's, uvicorn's, the access log's) is one
JSON object on one line: `time`, `level`, `logger`, `message`, the `request_id` and `principal`
of the request being answered when there is one, and the fields a caller gave with `extra=`.
Non-ASCII is escaped, so no value can forge a line. Records carry ids and counts only: the code
never logs a token, a secret, a body or a value from a file, and a failure's stack is logged
without the exception's arguments rendered anywhere else.
"""

from __future__ import annotations

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Set by the gateway for the request being answered (a task of its own, so each request's
# values stay its own), read by the formatter.
request_id_var: ContextVar[str | None] = ContextVar("together_request_id", default=None)
principal_var: ContextVar[str | None] = ContextVar("together_principal", default=None)

# Attributes every LogRecord has: anything else on a record came from `extra=` (uvicorn's
# `color_message` is its message again, with terminal colours).
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        # The access and refusal logs hand over a JSON object already: merged, not nested.
        merged = _json_object(message)
        if merged is None:
            event["message"] = message
        else:
            event["message"] = merged.pop("event", "")
            event.update(merged)
        request_id = request_id_var.get()
        if request_id is not None:
            event.setdefault("request_id", request_id)
        principal = principal_var.get()
        if principal is not None:
            event.setdefault("principal", principal)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event.setdefault(key, value if _plain(value) else str(value))
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=True, default=str)


def _json_object(message: str) -> dict[str, Any] | None:
    if not message.startswith("{"):
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = request_id_var.get()
        return f"{line} [request {request_id}]" if request_id else line


def logging_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the root, uvicorn's and the access loggers: every
    record goes once to stderr through the one formatter."""
    formatter = "json" if log_format == "json" else "text"
    handler = {
        "class": "logging.StreamHandler",
        "formatter": formatter,
        "stream": "ext://sys.stderr",
    }
    own = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": f"{__name__}.JsonFormatter"},
            "text": {"()": f"{__name__}.TextFormatter"},
        },
        "handlers": {"stderr": handler},
        # Libraries speak at warning and above; the platform's own loggers at `level`.
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "services": {"level": level},
            "gateway": {"level": level},
            "together": {"level": level},
            "uvicorn": own,
            "uvicorn.error": {"level": level, "propagate": True},
            "uvicorn.access": own,
            "together.access": own,
        },
    }


def configure(log_format: str, level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(log_format, level))
