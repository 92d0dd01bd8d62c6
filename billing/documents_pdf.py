"""The invoice and the receipt on paper: PDFs a patient keeps or hands to an insurer, in either
language, with amounts written as the reader's locale writes money (`hospital.i18n.format_money`).

Each is loaded by the one call its page uses (`get_invoice`, `patient_receipt`: the access check
and the audited read), so the PDF is exactly as private as the page. Dates are on the patient's
own calendar (their time zone), whoever prints them: the same paper for the patient and for the
billing office.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from billing.models import Invoice, Payer, Payment, PaymentKind
from billing.service import get_invoice, invoice_balance, patient_receipt
from hospital import i18n
from hospital.i18n import lazy_gettext as _l
from hospital.models import User
from hospital.pdf import PdfFile, document_language, render_pdf

logger = logging.getLogger(__name__)

PAYER_WORDS = {Payer.PATIENT: _l("Patient"), Payer.INSURER: _l("Insurer")}
# The references the platform itself writes on a payment (billing.routes), as a reader says them;
# any other reference (a bank's remittance number) prints as it was recorded.
PAYMENT_METHOD_WORDS = {"web payment": _l("Paid online"), "insurer remittance": _l("Insurer remittance")}


def invoice_pdf(session: Session, user: User, invoice_id: int) -> PdfFile:
    """The invoice as a PDF in the current locale, if `user` may read it."""
    invoice = get_invoice(session, user, invoice_id)
    content = render_pdf(
        "billing/invoice_pdf.html", invoice=invoice, balance=invoice_balance(invoice), zone=invoice.patient.timezone,
        local_datetime=i18n.local_datetime, local_date=i18n.local_date,
    )
    return PdfFile(content, f"invoice-{invoice.id}-{document_language()}.pdf", document_language())


def receipt_pdf(session: Session, user: User, invoice_id: int, payment_id: int) -> PdfFile:
    """The receipt of one payment (or refund) on an invoice, if `user` may read the invoice."""
    payment = patient_receipt(session, user, invoice_id, payment_id)
    invoice: Invoice = payment.invoice
    content = render_pdf(
        "billing/receipt_pdf.html", payment=payment, invoice=invoice, balance=invoice_balance(invoice),
        zone=invoice.patient.timezone, payer=str(PAYER_WORDS[payment.payer]), method=payment_method(payment),
        refund=payment.kind is PaymentKind.REFUND, local_datetime=i18n.local_datetime, local_date=i18n.local_date,
    )
    return PdfFile(content, f"receipt-{payment.id}-{document_language()}.pdf", document_language())


def payment_method(payment: Payment) -> str:
    reference = (payment.reference or "").strip()
    words = PAYMENT_METHOD_WORDS.get(reference.lower())
    return str(words) if words is not None else reference or "—"
