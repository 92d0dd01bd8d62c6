"""Downloads of the invoice and the receipt as PDFs: for the patient and the billing office, as
their pages are, in the reader's language or the one `?lang=` asks for."""

from __future__ import annotations

import logging

from flask import Blueprint, request
from flask.typing import ResponseReturnValue

from billing.documents_pdf import invoice_pdf, receipt_pdf
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.models import Role
from hospital.pdf import document_locale

logger = logging.getLogger(__name__)

bp = Blueprint("billing_pdf", __name__, template_folder="templates")


@bp.get("/invoices/<int:invoice_id>/invoice.pdf")
@require_roles(Role.PATIENT, Role.ADMIN)
def invoice_download(invoice_id: int) -> ResponseReturnValue:
    session = request_session()
    with document_locale(request.args.get("lang")):
        document = invoice_pdf(session, current_user(), invoice_id)
    return document.response()


@bp.get("/invoices/<int:invoice_id>/receipts/<int:payment_id>/receipt.pdf")
@require_roles(Role.PATIENT, Role.ADMIN)
def receipt_download(invoice_id: int, payment_id: int) -> ResponseReturnValue:
    session = request_session()
    with document_locale(request.args.get("lang")):
        document = receipt_pdf(session, current_user(), invoice_id, payment_id)
    return document.response()
