"""Insurance shares, payments and refunds posted once, balances, revenue reports and CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import jobs
from billing.models import Payment
from hospital.seed import DEMO_PASSWORD, DemoSeed
from tests.factories import analysis_completed, make_preliminary_report, study_completed


def invoiced(as_role: Any, db_session: Session, demo: DemoSeed, share_basis_points: int | None) -> dict[str, Any]:
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    jobs.charge_scan(db_session, study_completed(db_session, report.study_id))
    jobs.charge_ai_analysis(db_session, analysis_completed(db_session, report))
    db_session.commit()
    admin = as_role("admin")
    if share_basis_points is not None:
        assert admin.post("/api/coverage", json={"patient_id": demo.patient.id, "payer_name": "Acme Health",
                                                 "member_id": "M-1", "share_basis_points": share_basis_points}).status_code == 201
    response = admin.post("/api/invoices", json={"patient_id": demo.patient.id})
    assert response.status_code == 201
    return response.get_json()


def pay(client: Any, invoice_id: int, amount: int, key: str, **extra: Any) -> Any:
    return client.post(f"/api/invoices/{invoice_id}/payments",
                       json={"amount_minor": amount, "currency": "EUR", "idempotency_key": key, **extra})


def test_insurer_and_patient_shares_split_in_integers(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=3333)
    # 17500 x 33.33 % = 5832.75: the insurer's share rounds down, the cent fraction is the patient's.
    assert (invoice["total_minor"], invoice["insurer_share_minor"], invoice["patient_share_minor"]) == (17500, 5832, 11668)
    assert invoice["patient_due_minor"] + invoice["insurer_due_minor"] == invoice["total_minor"]


def test_payment_posted_twice_is_recorded_once_and_balances(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=8000)
    patient, admin = as_role("patient"), as_role("admin")
    first = pay(patient, invoice["id"], 3500, "card-tx-1")
    again = pay(patient, invoice["id"], 3500, "card-tx-1")
    assert first.status_code == again.status_code == 201
    assert again.get_json()["patient_due_minor"] == 0
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 1
    assert pay(patient, invoice["id"], 1, "card-tx-2").status_code == 400  # nothing left to pay
    assert pay(patient, invoice["id"], 3500, "card-tx-1", payer="insurer").status_code in (403, 409)
    settled = pay(admin, invoice["id"], 14000, "remittance-77", payer="insurer")
    assert settled.status_code == 201 and settled.get_json()["status"] == "balanced"


def test_refund_and_validation(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    patient, admin = as_role("patient"), as_role("admin")
    assert pay(patient, invoice["id"], 17500, "p-1").get_json()["status"] == "balanced"
    assert pay(patient, invoice["id"], 100, "r-0", kind="refund").status_code == 403  # refunds are the office's
    assert pay(admin, invoice["id"], 20000, "r-1", kind="refund").status_code == 400  # more than was paid
    refunded = pay(admin, invoice["id"], 2500, "r-2", kind="refund").get_json()
    assert (refunded["status"], refunded["paid_minor"], refunded["patient_due_minor"]) == ("issued", 15000, 2500)
    assert pay(admin, invoice["id"], 0, "z", kind="payment").status_code == 400
    assert pay(admin, invoice["id"], 10, "usd", currency="USD").status_code == 400
    assert pay(as_role("patient2"), invoice["id"], 10, "other").status_code == 403


def test_revenue_by_group_and_csv(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoiced(as_role, db_session, demo, share_basis_points=None)
    admin = as_role("admin")
    by_org = {line["group"]: line for line in admin.get("/api/revenue?group_by=organization").get_json()}
    assert by_org["Riverside Imaging Centre"]["total_minor"] == 17500
    assert by_org["Riverside Imaging Centre"]["ai_attributed_minor"] == 2500
    months = admin.get("/api/revenue?group_by=month").get_json()
    assert len(months) == 1 and months[0]["charges"] == 2
    exported = admin.get("/api/revenue?group_by=service_line&format=csv")
    assert exported.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert {r["service_line"]: r["total"] for r in rows} == {"ai-analysis": "25.00", "scan": "150.00"}
    assert admin.get("/api/revenue?group_by=colour").status_code == 400
    page = admin.get("/admin/revenue")
    assert page.status_code == 200 and "<svg" in page.get_data(as_text=True)
    assert as_role("clinician").get("/api/revenue").status_code == 403


def test_patient_pays_on_the_invoices_page_once(client: Any, as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    page = client.get("/login")
    token = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "patient", "password": DEMO_PASSWORD, "csrf_token": token})
    html = client.get("/invoices").get_data(as_text=True)
    assert "Pay €175.00" in html and ">To pay</span>" in html
    # Paying asks first: the confirmation page says what will be paid, and nothing is paid yet.
    confirm = client.get(f"/invoices/{invoice['id']}/pay").get_data(as_text=True)
    assert "You are about to pay €175.00" in confirm and "Confirm: pay €175.00" in confirm
    key = confirm.split('name="payment_key" value="')[1].split('"')[0]
    # Signing in starts a new session, with a new CSRF token: take the one the page carries.
    form = {"csrf_token": confirm.split('name="csrf_token" value="')[1].split('"')[0], "payment_key": key}
    unconfirmed = client.post(f"/invoices/{invoice['id']}/pay", data=form)
    assert unconfirmed.status_code == 200 and "You are about to pay" in unconfirmed.get_data(as_text=True)
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 0
    paid = client.post(f"/invoices/{invoice['id']}/pay", data={**form, "confirmed": "yes"})
    payment = db_session.scalars(select(Payment)).one()
    assert paid.status_code == 302 and paid.location.endswith(f"/invoices/{invoice['id']}/receipts/{payment.id}")
    again = client.post(f"/invoices/{invoice['id']}/pay", data={**form, "confirmed": "yes"})  # resubmitted form
    assert again.status_code == 302 and again.location.endswith("/invoices")
    assert db_session.scalar(select(func.count()).select_from(Payment)) == 1
    receipt = client.get(paid.location).get_data(as_text=True)
    assert f"Receipt {payment.id}" in receipt and "€175.00" in receipt and "Alex Rivera" in receipt
    assert "data-print" in receipt
    listed = client.get("/invoices").get_data(as_text=True)
    assert "Pay €175.00" not in listed
    # Paid is shown as paid, in the "done" colour, never as an amber "balanced".
    assert '<span class="badge good">Paid</span>' in listed and "balanced" not in listed
    assert f"Receipt {payment.id}: €175.00" in listed


def test_a_receipt_is_only_the_payers_to_see(client: Any, app: Any, as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    invoice = invoiced(as_role, db_session, demo, share_basis_points=None)
    patient = as_role("patient")
    assert pay(patient, invoice["id"], 17500, "receipt-1").status_code == 201
    payment = db_session.scalars(select(Payment)).one()
    other = app.test_client()
    html = other.get("/login").get_data(as_text=True)
    token = html.split('name="csrf_token" value="')[1].split('"')[0]
    other.post("/login", data={"username": "patient2", "password": DEMO_PASSWORD, "csrf_token": token})
    assert other.get(f"/invoices/{invoice['id']}/receipts/{payment.id}").status_code == 403
    assert other.get(f"/invoices/{invoice['id']}/pay").status_code == 403
    assert as_role("admin").get(f"/invoices/{invoice['id']}/receipts/{payment.id + 1}").status_code == 404
