"""How every process logs: one line per record, JSON in production, each carrying the id of the unit
of work that caused it.

The id (`request_id`) is taken from an incoming `X-Request-ID` when it looks like one (a proxy or a
client that already tags its requests), else generated, and sent back in the response header. A job
record written during the request keeps it (`JobRecord.request_id`), and the worker that runs the
job logs under it, so one id follows a request into the work it caused; a DICOM association gets its
own (`dicom-...`) that the studies and jobs it causes carry in the same way.

What is logged is ids, UIDs, AE titles, routes and counts, never a patient's name or identifiers:
the request line is the url rule's path without its query string, and no module logs request
bodies (tests/hospital/test_observability.py runs a loop and searches the captured log for the
demo patient's name and MRN).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from flask import Flask, Response, g, request

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A forwarded id is accepted only if it cannot smuggle anything into a log line or a header.
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
_request_id: ContextVar[str | None] = ContextVar("hospital_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request, job or DICOM association this code runs for (None outside one)."""
    return _request_id.get()


def new_request_id(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def bind_request_id(value: str | None) -> None:
    """Make `value` the current id for the rest of this thread's (or task's) context: a DICOM
    association thread binds it once when the association is accepted."""
    _request_id.set(value)


@contextmanager
def request_id_scope(value: str | None) -> Iterator[None]:
    """Run a block under `value` (a job under the id of the request that caused it)."""
    token = _request_id.set(value)
    try:
        yield
    finally:
        _request_id.reset(token)


def accepted_request_id(raw: str | None) -> str:
    """The forwarded id if it is acceptable, else a new one."""
    if raw and _ACCEPTABLE_REQUEST_ID.fullmatch(raw):
        return raw
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Stamp every record with the current request id (a filter on the handler, so records of
    every logger, pynetdicom's and RQ's included, get it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, and the
    exception's type and traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The development format, with the request id appended when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [{request_id}]" if request_id else line


def configure_logging(level: str, log_format: str) -> None:
    """Give the root logger one stream handler (JSON or text) with the request id, unless the
    process already configured logging (a test runner, an embedding host)."""
    root = logging.getLogger()
    if root.handlers:
        for handler in root.handlers:
            if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
                handler.addFilter(RequestIdFilter())
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)


def init_app(app: Flask) -> None:
    """Every request runs under a request id, answered in `X-Request-ID`."""

    @app.before_request
    def _bind_request_id() -> None:
        g.request_id = accepted_request_id(request.headers.get(REQUEST_ID_HEADER))
        g.request_id_token = _request_id.set(g.request_id)

    @app.after_request
    def _answer_request_id(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                _request_id.reset(token)
            except ValueError:
                # Reset from another context (a streamed response ends elsewhere): just clear it.
                _request_id.set(None)
