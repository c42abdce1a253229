"""Logging: human-readable lines by default, JSON lines with `--log-format json`.

Log records carry structured fields in `extra={"fields": {...}}`; the text format renders
them as `key=value`, the JSON format as keys of the object. Nothing here ever logs a
message body: callers pass envelope data, hashes and verdicts only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

LogFormat = Literal["text", "json"]


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


_NEEDS_QUOTES = frozenset(' "=\n\r\t')


def _text_value(value: Any) -> str:
    # One line per message is logged on the hot path: plain values skip json.dumps.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):  # recipients, matches: to=a@x,b@y
        return ",".join(_text_value(v) for v in value) or '""'
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or not _NEEDS_QUOTES.isdisjoint(text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}", record.levelname.lower(), record.name,
                 record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(_fields(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """Configure the root logger once: stderr, so stdout stays for command output."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter (mail.log from aiosmtpd, PIL's plugin debug lines) is not ours.
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))


def log_fields(**fields: Any) -> dict[str, Any]:
    """`logger.info("...", extra=log_fields(verdict="clean", ms=12))`."""
    return {"fields": fields}
