"""RQ job of partner model packages: run a submitted package's checks in the sandbox."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy.orm import Session

from ai_services.package_service import check_package
from ai_services.sandbox import SandboxLimits

logger = logging.getLogger(__name__)


def check_model_package(session: Session, package_id: int) -> None:
    """Queued by a submission: the sandbox's verdict on the package (a no-op when it has one)."""
    limits = SandboxLimits(**current_app.config.get("AI_PACKAGE_SANDBOX_LIMITS", {}))
    check_package(session, package_id, limits)
