"""Log lines on standard error: text for people, or one JSON object per line for log
shippers (``log_format``).

Everything keygate logs, the access log included, goes through the standard library's
``logging`` and one handler on the root logger, installed by :func:`configure_logging`;
only the formatter differs between the two formats, so a line says the same in both.
Structured fields travel as the record's ``extra`` (``log.info("…", extra={"account":
…})``) and become top-level JSON fields; :data:`FIELDS` names the common ones.

Why the formatters look the way they do:

* **A line cannot be forged.** JSON is rendered by orjson, never assembled from strings,
  so a value holding a quote or a newline stays inside its field. Text lines escape
  control characters in the message (a path may decode to a newline, ``%0a``), so a
  client cannot start a log line of its own.
* **No secret is logged.** The formatters do not search lines for secrets (they cannot
  know every spelling, and every line would pay): the code that logs keeps them out.
  Tokens and digests are never passed to a logger, the access log's path is redacted
  (:func:`gateway.accesslog.loggable_path`) and aiohttp's tracebacks, whose exceptions
  quote requests, are cut (:func:`gateway.connections.server_logger`).
* **A line written while a request is handled says which.** The request's id, route,
  account and key (once proven) are bound to the task handling it
  (:func:`bind_request_fields`: no logger call has to pass them) and added to every
  record that does not carry them already, so an upstream's failure can be matched to
  the 502 a client reports by its ``X-Request-Id``. Bound to the task, not to a context
  variable: a context is copied into every task started under it, and a long-lived
  background task started during a request would keep that request alive and write
  its lines in that request's name.
* **An event name per line.** ``event`` is a short name given by the code that logs
  (``extra={"event": "shutdown.draining"}``), or else the message before its arguments
  are filled in: a constant, so lines of one kind can be counted and alerted on even
  where the message itself varies.
"""

from __future__ import annotations

import logging
import sys
import time
from asyncio import Task, current_task
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# under --workers the processes share one standard error: each text line says whose
TEXT_FORMAT_WITH_PID = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

# The structured fields keygate's own lines use (camelCase, as in the API's JSON).
FIELDS = (
    "requestId",  # as in the X-Request-Id header and the error body
    "appKey",  # the API key (public, like a user name); never its token
    "account",  # the account the request targeted
    "route",  # the proxy route's name, or the management API's path pattern
    "status",  # HTTP status of the answer
    "errorCode",  # the error body's "code", when the answer was an error
    "ms",  # latency in milliseconds, until the answer was written
)

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))
) | {"message", "asctime", "taskName"}


# the fields of the request each task handles (see the module's text). A plain dict, not
# a WeakKeyDictionary (which costs a weak reference per request): every binding is
# removed in the ``finally`` of the handler that made it, which runs even when the task
# is cancelled or its coroutine closed unfinished.
_REQUEST_FIELDS: dict[Task[Any], Callable[[], Mapping[str, Any]]] = {}


def _task() -> Task[Any] | None:
    try:
        return current_task()
    except RuntimeError:  # no event loop runs in this thread
        return None


def bind_request_fields(fields: Callable[[], Mapping[str, Any]]) -> Task[Any] | None:
    """Every line this task logs until :func:`unbind_request_fields` carries
    ``fields()`` — called when a line is written, so that what becomes known later in
    the request (its route, its key) is included. Returns what to unbind."""
    task = _task()
    if task is not None:
        _REQUEST_FIELDS[task] = fields
    return task


def unbind_request_fields(task: Task[Any] | None) -> None:
    if task is not None:
        _REQUEST_FIELDS.pop(task, None)


class RequestFields(logging.Filter):
    """Adds the bound request's fields to a record that lacks them (the access log's
    records carry their own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _task()
        fields = _REQUEST_FIELDS.get(task) if task is not None else None
        if fields is not None:
            for name, value in fields().items():
                if value is not None and name not in record.__dict__:
                    setattr(record, name, value)
        return True


def _printable(text: str) -> str:
    """``text`` with control characters (newlines included) escaped: one log line stays
    one line. Printable text, the usual case, is returned as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """Today's human-readable lines; the message's control characters escaped.
    ``with_pid``: the process id after the logger's name (``--workers``)."""

    def __init__(self, with_pid: bool = False) -> None:
        super().__init__(TEXT_FORMAT_WITH_PID if with_pid else TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _printable(record.message)
        request_id = record.__dict__.get("requestId")
        if request_id is not None and record.__dict__.get("event") != "request":
            # a line about a request (the access line says its id already)
            record.message += f" (request id {request_id})"
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``event``, ``message``, the record's extra fields, and ``exception`` (its
    traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        event = fields.get("event")
        line: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which of --workers' processes (or their parent)
            "event": event if isinstance(event, str) else str(record.msg),
            "message": record.getMessage(),
        }
        for name, value in fields.items():
            if name not in _RECORD_ATTRIBUTES and name not in line and name != "event":
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _iso_utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class _StandardError(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is emitted (as logging's own
    last-resort handler does), so a replaced stderr never holds a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def formatter_for(log_format: str, with_pid: bool = False) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter(with_pid)


def configure_logging(verbose: bool = False, log_format: str = "text",
                      with_pid: bool = False) -> None:
    """Send every log line to standard error in ``log_format`` (``text`` or ``json``;
    ``with_pid``: text lines name their process, for ``--workers``, whose processes
    share standard error — JSON lines always carry ``pid``).

    Called again (once the settings are read, or in a ``--workers`` worker) it replaces
    the handler it installed before and leaves other handlers alone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StandardError):
            root.removeHandler(handler)
    handler = _StandardError()
    handler.setFormatter(formatter_for(log_format, with_pid))
    handler.addFilter(RequestFields())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # pycasbin logs the whole model at INFO on every load
    logging.getLogger("casbin").setLevel(logging.WARNING)
