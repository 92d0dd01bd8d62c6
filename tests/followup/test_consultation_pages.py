"""The consultation page's message thread: the consulting clinician and the patient read and
write; another patient is refused."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import MedicationRequest, Message
from hospital.seed import DemoSeed
from tests.followup.test_consultation_and_pharmacy import signed_consultation
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def post_message(client: FlaskClient, url: str, body: str) -> None:
    token = csrf_token_of(client.get(url).get_data(as_text=True))
    response = client.post(url, data={"action": "message", "body": body, "csrf_token": token})
    assert response.status_code == 302


def test_clinician_and_patient_exchange_messages_on_the_page(
    client: FlaskClient, app, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    assert 'id="message-form"' in client.get(url).get_data(as_text=True)
    post_message(client, url, "Your scan shows a small nodule; let us talk.")
    client.post("/logout", data={"csrf_token": csrf_token_of(client.get(url).get_data(as_text=True))})

    demo.patient.timezone = "Asia/Tokyo"  # the patient reads on their own clock (JST, no DST)
    db_session.commit()
    patient = app.test_client()
    sign_in(patient, "patient")
    post_message(patient, url, "Thank you, Thursday works.")
    page = patient.get(url).get_data(as_text=True)
    thread = page.split('id="message-thread"')[1].split("</ol>")[0]
    assert thread.index("small nodule") < thread.index("Thursday works")  # oldest first
    assert "Clinician" in thread and "You" in thread and thread.count(" JST</time>") == 2
    sign_in(client, "clinician")
    assert client.get(url).get_data(as_text=True).count(" UTC</time>") == 2  # the clinic's zone
    empty = patient.post(url, data={"action": "message", "body": "  ", "csrf_token": csrf_token_of(page)},
                         follow_redirects=True)
    assert "a message needs some text" in empty.get_data(as_text=True)
    assert [m.body for m in db_session.scalars(select(Message).order_by(Message.id))] == [
        "Your scan shows a small nodule; let us talk.", "Thank you, Thursday works."]


def test_another_patient_cannot_open_or_write_in_the_consultation(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    sign_in(client, "patient2")
    url = f"/consultations/{consultation_id}"
    assert client.get(url).status_code == 403
    token = csrf_token_of(client.get("/consultations").get_data(as_text=True))
    refused = client.post(url, data={"action": "message", "body": "hi", "csrf_token": token}, follow_redirects=True)
    assert db_session.scalars(select(Message)).all() == []
    assert refused.status_code in (200, 403)


def test_unread_messages_are_counted_until_opened_and_the_sender_sees_a_receipt(
    client: FlaskClient, app, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    post_message(client, url, "Please book the repeat scan.")
    post_message(client, url, "And bring your old films.")
    assert "not read yet" in client.get(url).get_data(as_text=True)

    patient = app.test_client()
    sign_in(patient, "patient")
    listing = patient.get("/consultations").get_data(as_text=True)
    assert "2 unread messages" in listing
    patient.get(url)  # reading the thread marks the clinician's messages read
    assert "unread message" not in patient.get("/consultations").get_data(as_text=True)

    receipts = client.get(url).get_data(as_text=True)
    assert receipts.count('class="receipt">read<') == 2 and "not read yet" not in receipts
    # The patient's own unanswered message is unread for the clinician, not for the patient.
    post_message(patient, url, "Will do.")
    assert "1 unread message" in client.get("/consultations").get_data(as_text=True)
    assert "unread message" not in patient.get("/consultations").get_data(as_text=True)


def test_a_refused_prescription_comes_back_with_what_was_typed(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    form = {"csrf_token": csrf_token_of(client.get(url).get_data(as_text=True)), "action": "prescribe",
            "medication_code": "J01CA04", "dosage_text": "1 capsule tds",
            "quantity": "a box", "refills": "2", "pharmacy_organization_id": str(demo.pharmacy.id)}
    refused = client.post(url, data=form)
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422 and "quantity must be a whole number" in page
    assert '<option value="J01CA04" selected>' in page and 'value="1 capsule tds"' in page and 'value="a box"' in page
    assert 'value="2"' in page and f'<option value="{demo.pharmacy.id}" selected>' in page
    assert db_session.scalars(select(MedicationRequest)).all() == []
    # The other forms on the page stay empty.
    assert '<textarea id="note" name="note" rows="4" required></textarea>' in page
