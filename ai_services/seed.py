"""Demo seeding: register the shipped model weights as the active version."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy.orm import Session

from ai_services.service import active_model_version, register_model_version
from hospital.seed import DemoSeed

logger = logging.getLogger(__name__)


def seed_model_registry(session: Session, seed: DemoSeed) -> None:
    if active_model_version(session) is None:
        register_model_version(session, current_app.config["AI_WEIGHTS"], activate=True)
