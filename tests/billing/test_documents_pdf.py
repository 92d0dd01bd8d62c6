"""The invoice and the receipt as PDFs: lines, totals and money as the reader's locale writes them,
the paid date and method on the receipt, in English and Chinese; only for those who may see them."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import Invoice
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from tests.billing.test_payments_and_revenue import invoiced, pay
from tests.pages import sign_in
from tests.pdf_checks import assert_printable_with_embedded_cjk_font, pdf_text


def chinese_patient(db_session: Session, demo: DemoSeed) -> None:
    demo.patient.family_name, demo.patient.given_name = "李", "华"
    db_session.commit()


def test_the_invoice_prints_its_lines_and_totals_in_english(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    chinese_patient(db_session, demo)
    invoice = invoiced(as_role, db_session, demo, share_basis_points=8000)
    row = db_session.get(Invoice, invoice["id"])
    assert row is not None

    response = as_role("patient").get(f"/invoices/{invoice['id']}/invoice.pdf")

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == f'attachment; filename="invoice-{invoice["id"]}-en.pdf"'
    assert response.headers["Cache-Control"] == "private, no-store"
    text = pdf_text(response.data)
    for expected in (f"Invoice {invoice['id']}", "Imaging Hospital", "李华", demo.patient.mrn, "Billed to",
                     "Acme Health", "Unit price", "Total", "€175.00", "Paid by your insurer", "€140.00",
                     "Still due from you", "€35.00", "To pay", "Page 1 of 1", *(item.display for item in row.items)):
        assert expected in text, f"{expected!r} is not in the invoice: {text}"
    assert_printable_with_embedded_cjk_font(response.data)


def test_the_invoice_prints_in_chinese_for_a_chinese_reader(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    chinese_patient(db_session, demo)
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    demo.users["patient"].locale = "zh_CN"
    db_session.commit()

    response = as_role("patient").get(f"/invoices/{invoice['id']}/invoice.pdf")

    assert response.status_code == 200
    assert response.headers["Content-Language"] == "zh-CN"
    assert response.headers["Content-Disposition"].endswith('-zh-CN.pdf"')
    text = pdf_text(response.data)
    for expected in (f"发票 {invoice['id']}", "影像医院", "李华", "合计", "€175.00", "待支付", "您仍需支付",
                     "第 1 页，共 1 页"):
        assert expected in text, f"{expected!r} is not in the invoice: {text}"
    assert "Invoice" not in text
    assert_printable_with_embedded_cjk_font(response.data)


def test_the_receipt_prints_the_paid_date_and_method(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    chinese_patient(db_session, demo)
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    patient = as_role("patient")
    paid = pay(patient, invoice["id"], 17500, "pdf-receipt-1", reference="web payment").get_json()
    payment_id = paid["payments"][0]["id"]
    url = f"/invoices/{invoice['id']}/receipts/{payment_id}/receipt.pdf"

    english = patient.get(url)
    chinese = patient.get(f"{url}?lang=zh_CN")

    assert english.status_code == chinese.status_code == 200
    assert english.headers["Content-Disposition"] == f'attachment; filename="receipt-{payment_id}-en.pdf"'
    text = pdf_text(english.data)
    for expected in (f"Receipt {payment_id}", "李华", "Amount received", "€175.00", "Paid on", "Paid online",
                     f"Invoice {invoice['id']}, issued on", "Still due from you", "€0.00"):
        assert expected in text, f"{expected!r} is not in the receipt: {text}"
    assert re.search(r"Paid on \w{3} \d{1,2} \w{3} \d{4} \d\d:\d\d", text), text
    zh = pdf_text(chinese.data)
    for expected in (f"收据 {payment_id}", "李华", "收款金额", "付款时间", "网上支付", "年", "€175.00"):
        assert expected in zh, f"{expected!r} is not in the receipt: {zh}"
    assert_printable_with_embedded_cjk_font(chinese.data)

    # The billing office prints the same receipt; a refund prints as one.
    admin = as_role("admin")
    assert admin.get(url).status_code == 200
    refund = pay(admin, invoice["id"], 2500, "pdf-refund-1", kind="refund").get_json()
    refund_id = max(p["id"] for p in refund["payments"])
    refunded = pdf_text(admin.get(f"/invoices/{invoice['id']}/receipts/{refund_id}/receipt.pdf").data)
    assert f"Refund {refund_id}" in refunded and "Amount refunded" in refunded and "€25.00" in refunded


def test_only_the_patient_and_the_billing_office_get_the_papers(
    as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    paid = pay(as_role("patient"), invoice["id"], 17500, "pdf-access-1").get_json()
    payment_id = paid["payments"][0]["id"]
    invoice_url = f"/invoices/{invoice['id']}/invoice.pdf"
    receipt_url = f"/invoices/{invoice['id']}/receipts/{payment_id}/receipt.pdf"

    for outsider in ("patient2", "clinician", "radiologist"):
        assert as_role(outsider).get(invoice_url).status_code in (403, 404), outsider
        assert as_role(outsider).get(receipt_url).status_code in (403, 404), outsider
    assert as_role("patient").get(f"/invoices/{invoice['id']}/receipts/999999/receipt.pdf").status_code == 404
    assert as_role("patient").get("/invoices/999999/invoice.pdf").status_code == 404
    assert as_role("patient").get(f"{invoice_url}?lang=xx").status_code == 400
    assert as_role("admin").get(invoice_url).status_code == 200

    reads = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "Invoice", AuditEvent.entity_id == str(invoice["id"]), AuditEvent.action == "R",
        AuditEvent.user_id == demo.users["admin"].id)).all()
    assert reads, "the download is an audited read of the invoice"
    denied = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "Invoice", AuditEvent.entity_id == str(invoice["id"]),
        AuditEvent.user_id == demo.users["patient2"].id)).all()
    assert denied and all(event.outcome != 0 for event in denied)


def test_the_patients_pages_link_to_the_papers(client: Any, as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    paid = pay(as_role("patient"), invoice["id"], 17500, "pdf-links-1", reference="web payment").get_json()
    payment_id = paid["payments"][0]["id"]
    sign_in(client, "patient")

    invoices = client.get("/invoices", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    receipt = client.get(f"/invoices/{invoice['id']}/receipts/{payment_id}").get_data(as_text=True)

    invoice_link = f"/invoices/{invoice['id']}/invoice.pdf"
    receipt_link = f"/invoices/{invoice['id']}/receipts/{payment_id}/receipt.pdf"
    assert invoice_link in invoices and "下载发票（PDF）" in invoices
    assert receipt_link in receipt
    download = client.get(receipt_link)
    assert download.status_code == 200 and download.mimetype == "application/pdf"
