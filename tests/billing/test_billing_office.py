"""The billing office page: who has charges waiting for an invoice, issuing it, and recording the
insurer's payment once however often the form is posted."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import jobs
from billing.models import ChargeItem, ChargeStatus, Invoice, InvoiceStatus, Payment
from billing.service import set_coverage
from hospital.seed import DemoSeed
from tests.factories import analysis_completed, make_preliminary_report, study_completed
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def charged_patient(db_session: Session, demo: DemoSeed) -> None:
    """A scan and its AI analysis billed to the demo patient, 70 % covered by their insurer."""
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    jobs.charge_scan(db_session, study_completed(db_session, report.study_id))
    jobs.charge_ai_analysis(db_session, analysis_completed(db_session, report))
    set_coverage(db_session, demo.users["admin"], demo.patient.id, "Acme Health", "ACME-1", 7000)
    db_session.commit()


def test_admin_issues_an_invoice_and_records_the_insurers_payment_once(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    charged_patient(db_session, demo)
    sign_in(client, "admin")
    page = client.get("/admin/billing").get_data(as_text=True)
    queue = page.split('id="unbilled"')[1].split("</table>")[0]
    assert "Alex Rivera" in queue and "€175.00" in queue and ">2</td>" in queue
    form = {"csrf_token": csrf_token_of(page), "action": "issue", "patient_id": str(demo.patient.id)}
    # Without the dialog's agreement (a browser without scripts) the server asks on a page of its
    # own, naming the amount, and nothing is issued until the form comes back agreed.
    asked = client.post("/admin/billing", data=form)
    question = asked.get_data(as_text=True)
    assert asked.status_code == 200 and asked.headers["Cache-Control"] == "no-store"
    assert "Issue an invoice of €175.00 to Alex Rivera? An issued invoice cannot be withdrawn." in question
    assert 'name="confirmed" value="yes"' in question and f'name="patient_id" value="{demo.patient.id}"' in question
    assert db_session.scalars(select(Invoice)).all() == []
    form = {**form, "csrf_token": csrf_token_of(question), "confirmed": "yes"}
    issued = client.post("/admin/billing", data=form, follow_redirects=True).get_data(as_text=True)
    invoice = db_session.scalars(select(Invoice)).one()
    assert f"Invoice {invoice.id} issued to Alex Rivera: €175.00." in issued
    assert "Nothing waits to be invoiced" in issued
    assert {c.status for c in db_session.scalars(select(ChargeItem))} == {ChargeStatus.BILLED}
    row = issued.split(f'id="invoice-{invoice.id}"')[1].split("</tr>")[0]
    assert "€122.50" in row and "€52.50" in row  # insurer 70 %, patient 30 %
    again = client.post("/admin/billing", data=form, follow_redirects=True).get_data(as_text=True)
    assert "has nothing to invoice" in again and len(db_session.scalars(select(Invoice)).all()) == 1

    key = issued.split('name="payment_key" value="')[1].split('"')[0]
    payment = {"csrf_token": csrf_token_of(issued), "action": "insurer_payment", "invoice_id": str(invoice.id),
               "payment_key": key, "amount": "122.50", "confirmed": "yes"}
    paid = client.post("/admin/billing", data=payment, follow_redirects=True).get_data(as_text=True)
    assert f"Insurer payment of €122.50 recorded on invoice {invoice.id}." in paid
    client.post("/admin/billing", data=payment)  # a double click: recorded once
    payments = db_session.scalars(select(Payment)).all()
    assert [(p.amount_minor, p.payer.value) for p in payments] == [(12250, "insurer")]
    too_much = client.post("/admin/billing", data={**payment, "payment_key": key + "x", "amount": "1.00"},
                           follow_redirects=True).get_data(as_text=True)
    assert "The insurer owes €0.00 on this invoice, not €1.00." in too_much
    db_session.refresh(invoice)
    assert invoice.status is InvoiceStatus.ISSUED  # the patient's 52.50 is still due


def test_only_administrators_open_the_billing_office(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "patient")
    assert client.get("/admin/billing").status_code == 403
