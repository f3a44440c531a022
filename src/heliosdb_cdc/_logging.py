"""Log setup: plain or JSON lines; delivery failures carry stream, endpoint and event id."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

_EXTRA = ("stream", "endpoint", "event_id", "lsn", "attempt")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


#: characters that could end a log line or hide text in it: C0 controls (newline, carriage
#: return, escape...), DEL, C1 controls (NEL), line/paragraph separators, zero-width and
#: bidirectional-override characters and the byte order mark
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def escape(text: str) -> str:
    """``text`` with every character that could break or forge a log line escaped
    (``\\n``, ``\\x1b``, ``\\u2028``): what users wrote stays on one line."""
    return _UNSAFE.sub(_escape_char, text)


class PlainFormatter(logging.Formatter):
    """One line per record: the message and the context fields are escaped
    (:func:`escape`), so no stream name, SQL text or URL can forge a log line; the lines
    of a traceback that follows are indented, so none starts like a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        head, nl, rest = base.partition("\n")
        if nl:  # traceback / stack: keep its lines, indented, each escaped
            base = head + "".join("\n    " + escape(line) for line in rest.split("\n"))
        extra = [f"{k}={escape(str(getattr(record, k)))}" for k in _EXTRA if hasattr(record, k)]
        return base + (" [" + " ".join(extra) + "]" if extra else "")


def setup_logging(level: str = "INFO", json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class BadRequestLogFilter(logging.Filter):
    """On aiohttp's server logger: a malformed request (oversized header, bad request
    line...) is the client's fault, so aiohttp's ERROR with a full traceback becomes one
    WARNING line naming the problem, at most one per ``interval`` seconds (the next
    says how many were left out). Other records pass unchanged."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = float("-inf")
        self._dropped = 0

    def reset(self) -> None:
        """Forget the last line written (the next malformed request is logged)."""
        self._last = float("-inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._dropped += 1
            return False
        self._last = now
        more = f" ({self._dropped} more since the last such line)" if self._dropped else ""
        self._dropped = 0
        detail = (getattr(exc, "message", "") or type(exc).__name__)[:200]
        record.msg = "malformed HTTP request from %s refused with %s: %s%s"
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.args = (remote, getattr(exc, "code", 400), detail, more)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def install_bad_request_filter(logger: logging.Logger | None = None) -> BadRequestLogFilter:
    """The :class:`BadRequestLogFilter` on aiohttp's server logger, put there once."""
    logger = logger or logging.getLogger("aiohttp.server")
    for f in logger.filters:
        if isinstance(f, BadRequestLogFilter):
            return f
    flt = BadRequestLogFilter()
    logger.addFilter(flt)
    return flt
