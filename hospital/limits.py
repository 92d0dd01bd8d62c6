"""How much one request may ask of the app: the size of a FHIR or JSON API body, and the number of
entries in a FHIR transaction or batch Bundle.

The body limit `MAX_JSON_BYTES` (10 MiB by default) is far below `MAX_CONTENT_LENGTH`, the DICOM
upload limit (512 MiB) that STOW-RS and the pages keep: a JSON document is parsed whole in memory,
an image upload is not one to parse. It is applied before the view runs, so an oversized body is
refused from its Content-Length without being read, and a body sent without one is cut off as soon
as it passes the limit (Werkzeug's limited stream raises 413). The error handlers answer 413 as an
OperationOutcome under /fhir and an HTTP problem under /api.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from hospital.errors import PayloadTooLarge

logger = logging.getLogger(__name__)

# Paths whose bodies are JSON documents (FHIR resources and Bundles, the JSON API). DICOMweb and
# WADO carry images and keep the upload limit.
JSON_PATH_PREFIXES = ("/fhir", "/api")


def init_app(app: Flask) -> None:
    # Registered before the CSRF check, which may read a form body.
    app.before_request(_limit_json_body)


def _limit_json_body() -> None:
    if not request.path.startswith(JSON_PATH_PREFIXES):
        return
    # Never more than the upload limit, should someone set that lower.
    limit = min(int(current_app.config["MAX_JSON_BYTES"]), int(current_app.config["MAX_CONTENT_LENGTH"]))
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        logger.info("refused a %d-byte body on %s %s", request.content_length, request.method, request.path)
        raise RequestEntityTooLarge(f"the body is larger than {limit} bytes, the limit for FHIR and JSON bodies")


def check_bundle_entries(count: int) -> None:
    """Refuse a transaction or batch Bundle with more entries than `FHIR_MAX_BUNDLE_ENTRIES`: each
    entry is a request of its own (and an audit row), so one Bundle must not become thousands."""
    limit = int(current_app.config["FHIR_MAX_BUNDLE_ENTRIES"])
    if count > limit:
        raise PayloadTooLarge(
            f"the Bundle has {count} entries; at most {limit} are accepted (FHIR_MAX_BUNDLE_ENTRIES): split it"
        )
