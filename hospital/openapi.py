"""The OpenAPI 3 description of the JSON API under /api, served at /api/openapi.json.

The description is a static file (`openapi.json` beside this module) kept by hand with the
routes; `tests/security/test_api_fuzz.py` fuzzes the app against it and fails when they drift.
The FHIR API describes itself at /fhir/metadata.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

logger = logging.getLogger(__name__)

SPEC_PATH = Path(__file__).with_name("openapi.json")

bp = Blueprint("openapi", __name__)


@cache
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


@bp.get("/api/openapi.json")
def spec() -> ResponseReturnValue:
    return jsonify(load_spec())
