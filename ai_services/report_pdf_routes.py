"""The signed report's PDF download: authorised exactly as the report page is (`get_report`, its
access check and audit), written in the reader's language or the one `?lang=` asks for."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

from ai_services.report_pdf import REPORT_PDF_PATH, signed_report_pdf
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.pdf import document_locale

logger = logging.getLogger(__name__)

bp = Blueprint("ai_report_pdf", __name__, template_folder="templates")


@bp.get(REPORT_PDF_PATH)
@require_roles()
def report_pdf(report_id: int) -> ResponseReturnValue:
    session = request_session()
    with document_locale(request.args.get("lang")):
        document = signed_report_pdf(session, current_user(), report_id, Path(current_app.config["DICOM_STORAGE_DIR"]))
    return document.response()
