"""Where the research store lives and the secret its pseudonyms are seeded from (app config)."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

logger = logging.getLogger(__name__)


def research_dir(app: Flask) -> Path:
    """RESEARCH_STORAGE_DIR (`research/` in the instance folder unless set): de-identified files only."""
    return Path(app.config["RESEARCH_STORAGE_DIR"])


def dicom_dir(app: Flask) -> Path:
    return Path(app.config["DICOM_STORAGE_DIR"])


def research_secret(app: Flask) -> str:
    """RESEARCH_SECRET, else SECRET_KEY: it must stay the same for one patient's UIDs to stay consistent."""
    return str(app.config.get("RESEARCH_SECRET") or app.config["SECRET_KEY"])
