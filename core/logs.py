"""Logging for every hepascope entry point: one line per record on stderr, with a UTC
timestamp, as text (``2026-12-03T11:47:24.123Z hepascope: INFO: ...``) or, for a hospital's
log collector, as one JSON object per line (``--log-json``). stdlib only.

The choice is kept in the environment (``HEPASCOPE_LOG_JSON``) so that the spawned
inference process logs the same way as its parent."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

JSON_ENV = "HEPASCOPE_LOG_JSON"
LEVELS = ("debug", "info", "warning", "error")


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC time> <name>: <LEVEL>: <message>``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {self.name}: {record.levelname}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, process, message,
    and ``exc`` (the traceback text) when there is one."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"time": _utc(record.created), "level": record.levelname,
                               "logger": record.name, "process": self.name,
                               "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


HANDLER_NAME = "hepascope.stderr"  # the handler configure installs (and replaces)


def configure(level: int | str = logging.WARNING, *, json_lines: bool | None = None,
              name: str = "hepascope") -> None:
    """Set the root logger's one stderr handler (replacing an earlier one of ours). ``json_lines``
    None: as the environment says (a child follows its parent)."""
    if json_lines is None:
        json_lines = os.environ.get(JSON_ENV) == "1"
    else:
        os.environ[JSON_ENV] = "1" if json_lines else "0"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(name) if json_lines else TextFormatter(name))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for h in list(root.handlers):  # ours only: a host's handlers (pytest's capture) stay
        if h.get_name() == HANDLER_NAME:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def error_line(text: str, name: str = "hepascope") -> str:
    """The one line a command prints for a fatal error: ``<name>: error: <text>``, or a JSON
    record when logging is JSON (so a collector parses it too)."""
    if os.environ.get(JSON_ENV) == "1":
        return json.dumps({"time": _utc(time.time()), "level": "ERROR", "logger": name,
                           "process": name, "pid": os.getpid(), "message": text},
                          ensure_ascii=False)
    return f"{name}: error: {text}"

