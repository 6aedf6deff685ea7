"""Logging set-up for `steering-server`: text lines for people, or one JSON object per line (`--log-format json`)
for log collectors. Loggers of libraries that install their own handler (transformers' continuous batching) are
given the same format."""

from __future__ import annotations

import datetime as _dt
import json
import logging

__all__ = ["JsonFormatter", "adopt_library_loggers", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that do not propagate to the root logger and print through a handler of their own.
_LIBRARY_LOGGERS = ("ContinuousBatchingLogger",)


class JsonFormatter(logging.Formatter):
    """{"time": ISO 8601 UTC, "level", "logger", "message"} (+ "exception" with the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging to stderr at `level`, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op when handlers exist (pytest, embedders)


def adopt_library_loggers(fmt: str) -> None:
    """Give the handlers of libraries' own loggers our format; call after importing them (the engine). With JSON
    lines, transformers' progress bars ("Loading weights") are turned off: they are not log records."""
    for name in _LIBRARY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(_formatter(fmt))
    if fmt == "json":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
