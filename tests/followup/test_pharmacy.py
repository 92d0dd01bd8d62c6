"""The pharmacy's day through the API, FHIR and the pages: prescribing only from the coded
formulary and only in an open consultation, partial supply, stock lots with expiry, an unknown
code refused with its reason, and a prescription returned to the prescriber."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import MedicationDispense, MedicationRequest, MedicationRequestStatus
from hospital.clock import utcnow
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from tests.followup.test_consultation_and_pharmacy import signed_consultation
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

ATC = "http://www.whocc.no/atc"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def prescribe(as_role: Any, consultation_id: int, demo: DemoSeed, code: str = "J01CA04", quantity: int = 3,
              refills: int = 0) -> Any:
    return as_role("clinician").post(f"/api/consultations/{consultation_id}/prescriptions", json={
        "medication_code": code, "dosage_text": "as directed", "quantity": quantity, "refills": refills,
        "pharmacy_organization_id": demo.pharmacy.id,
    })


def fhir_prescription(consultation_id: int, demo: DemoSeed, coding: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [coding]},
        "subject": {"reference": f"Patient/{demo.patient.id}"},
        "encounter": {"reference": f"Encounter/{consultation_id}"},
        "dosageInstruction": [{"text": "as directed"}],
        "dispenseRequest": {"quantity": {"value": 2}, "performer": {"reference": f"Organization/{demo.pharmacy.id}"}},
    }


def test_free_text_medication_is_refused_and_a_formulary_item_is_coded(
    as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    refused = prescribe(as_role, consultation_id, demo, code="amoxicillin")
    assert refused.status_code == 400
    assert "'amoxicillin' is not in the formulary" in refused.get_json()["detail"]
    clinician = as_role("clinician")
    outcome = clinician.post("/fhir/MedicationRequest", headers=FHIR_JSON,
                             json=fhir_prescription(consultation_id, demo, {"code": "amoxicillin"}))
    assert outcome.status_code == 400 and "not in the formulary" in outcome.get_json()["issue"][0]["diagnostics"]
    assert db_session.scalars(select(MedicationRequest)).all() == []

    created = prescribe(as_role, consultation_id, demo)
    assert created.status_code == 201
    assert created.get_json()["medication_display"] == "Amoxicillin 500 mg capsules, pack of 21"
    resource = clinician.get(f"/fhir/MedicationRequest/{created.get_json()['id']}").get_json()
    assert resource["medicationCodeableConcept"]["coding"][0] == {
        "system": ATC, "code": "J01CA04", "display": "Amoxicillin 500 mg capsules, pack of 21"}


def test_prescribing_is_refused_on_a_finished_consultation_on_the_api_fhir_and_page(
    as_role: Any, client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    clinician = as_role("clinician")
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": "Discussed."}).status_code == 200
    refused = prescribe(as_role, consultation_id, demo)
    assert refused.status_code == 409
    assert refused.get_json()["detail"] == f"consultation {consultation_id} is finished: prescribe in an open consultation"
    outcome = clinician.post("/fhir/MedicationRequest", headers=FHIR_JSON,
                             json=fhir_prescription(consultation_id, demo, {"system": ATC, "code": "J01CA04"}))
    assert outcome.status_code == 409 and outcome.get_json()["resourceType"] == "OperationOutcome"
    assert "is finished" in outcome.get_json()["issue"][0]["diagnostics"]

    sign_in(client, "clinician")
    url = f"/consultations/{consultation_id}"
    page = client.get(url).get_data(as_text=True)
    assert 'id="prescribe-form"' not in page and "is finished: no new prescriptions" in page
    posted = client.post(url, data={"csrf_token": csrf_token_of(page), "action": "prescribe", "medication_code": "J01CA04",
                                    "dosage_text": "x", "quantity": "1", "pharmacy_organization_id": str(demo.pharmacy.id)})
    assert posted.status_code == 422 and "is finished: prescribe in an open consultation" in posted.get_data(as_text=True)
    assert db_session.scalars(select(MedicationRequest)).all() == []


def test_the_prescribe_form_is_a_picker_of_formulary_items(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    sign_in(client, "clinician")
    page = client.get(f"/consultations/{consultation_id}").get_data(as_text=True)
    picker = page.split('<select id="medication_code"')[1].split("</select>")[0]
    assert '<option value="J01CA04">Amoxicillin 500 mg capsules, pack of 21 (ATC J01CA04)</option>' in picker
    assert "RxNorm" in picker


def test_partial_supply_and_expired_lots_are_not_dispensed(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    med = prescribe(as_role, consultation_id, demo, code="N02BE01", quantity=10).get_json()
    pharmacist = as_role("pharmacist")
    today = utcnow().date()
    expired = {"medication_code": "N02BE01", "lot_number": "OLD-1", "quantity": 50,
               "expires_on": (today - timedelta(days=1)).isoformat()}
    assert pharmacist.post("/api/pharmacy/stock", json=expired).status_code == 201
    refused = pharmacist.post(f"/api/medication-requests/{med['id']}/dispense", json={"quantity": 4})
    assert refused.status_code == 409
    assert refused.get_json()["detail"] == ("out of stock: N02BE01 has 0 unit(s) in date on hand, 4 needed "
                                            "(50 expired, not dispensed)")
    late = {"medication_code": "N02BE01", "lot_number": "LATE-9", "quantity": 5, "expires_on": (today + timedelta(days=300)).isoformat()}
    soon = {"medication_code": "N02BE01", "lot_number": "SOON-2", "quantity": 3, "expires_on": (today + timedelta(days=20)).isoformat()}
    assert pharmacist.post("/api/pharmacy/stock", json=late).status_code == 201
    assert pharmacist.post("/api/pharmacy/stock", json=soon).status_code == 201
    assert pharmacist.post(f"/api/medication-requests/{med['id']}/dispense", json={"quantity": 4}).status_code == 201
    lots = {lot["lot_number"]: lot["quantity_on_hand"] for item in pharmacist.get("/api/pharmacy/stock").get_json()
            if item["medication_code"] == "N02BE01" for lot in item["lots"]}
    assert lots == {"OLD-1": 50, "SOON-2": 0, "LATE-9": 4}  # the lot that expires first goes first
    queue = pharmacist.get("/api/dispense-queue").get_json()
    assert [(m["id"], m["dispensed"]) for m in queue] == [(med["id"], 4)]  # partial: still to finish


def test_restock_needs_a_formulary_item_a_lot_and_an_expiry(as_role: Any, demo: DemoSeed) -> None:
    pharmacist = as_role("pharmacist")
    expires = (utcnow().date() + timedelta(days=100)).isoformat()
    unknown = pharmacist.post("/api/pharmacy/stock", json={"medication_code": "aspirin", "lot_number": "A", "quantity": 1,
                                                           "expires_on": expires})
    assert unknown.status_code == 400 and "'aspirin' is not in the formulary" in unknown.get_json()["detail"]
    no_expiry = pharmacist.post("/api/pharmacy/stock", json={"medication_code": "J01CA04", "lot_number": "A", "quantity": 1})
    assert no_expiry.status_code == 400
    assert as_role("clinician").post("/api/pharmacy/stock", json={"medication_code": "J01CA04", "lot_number": "A",
                                                                  "quantity": 1, "expires_on": expires}).status_code == 403


def test_an_unknown_code_fails_with_its_reason_and_is_returned_to_the_prescriber(
    as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    # Written before the formulary existed: a free-text code.
    legacy = MedicationRequest(consultation_id=consultation_id, patient_id=demo.patient.id,
                               prescriber_id=demo.users["clinician"].practitioner_id,
                               pharmacy_organization_id=demo.pharmacy.id, medication_code="amoxicillin",
                               medication_display="amoxicillin", dosage_text="tds", quantity=1)
    db_session.add(legacy)
    db_session.commit()
    pharmacist = as_role("pharmacist")
    refused = pharmacist.post(f"/api/medication-requests/{legacy.id}/dispense", json={})
    assert refused.status_code == 409
    assert refused.get_json()["detail"] == ("cannot dispense: medication code 'amoxicillin' is not in the formulary; "
                                            "return the prescription to the prescriber")

    assert as_role("clinician").post(f"/api/medication-requests/{legacy.id}/return",
                                     json={"reason": "unknown code"}).status_code == 403
    assert pharmacist.post(f"/api/medication-requests/{legacy.id}/return", json={"reason": " "}).status_code == 400
    returned = pharmacist.post(f"/api/medication-requests/{legacy.id}/return",
                               json={"reason": "Unknown code 'amoxicillin': please prescribe a formulary item"})
    assert returned.status_code == 200 and returned.get_json()["status"] == "on-hold"
    assert pharmacist.get("/api/dispense-queue").get_json() == []
    again = pharmacist.post(f"/api/medication-requests/{legacy.id}/return", json={"reason": "twice"})
    assert again.status_code == 409

    resource = as_role("clinician").get(f"/fhir/MedicationRequest/{legacy.id}").get_json()
    assert resource["status"] == "on-hold"
    assert resource["statusReason"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-status-reason",
                    "code": "clarif", "display": "Prescription requires clarification"}],
        "text": "Unknown code 'amoxicillin': please prescribe a formulary item"}
    audit = db_session.scalars(select(AuditEvent.description).where(
        AuditEvent.entity_type == "MedicationRequest", AuditEvent.entity_id == str(legacy.id), AuditEvent.action == "U")).all()
    assert "returned to the prescriber" in audit


def test_a_pharmacist_returns_a_prescription_through_fhir(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    med = prescribe(as_role, consultation_id, demo).get_json()
    pharmacist = as_role("pharmacist")
    current = pharmacist.get(f"/fhir/MedicationRequest/{med['id']}").get_json()
    changed_dose = {**current, "dosageInstruction": [{"text": "double it"}]}
    assert pharmacist.put(f"/fhir/MedicationRequest/{med['id']}", json=changed_dose, headers=FHIR_JSON).status_code == 422
    on_hold = {**current, "status": "on-hold", "statusReason": {"text": "Allergy to penicillin noted at the counter"}}
    updated = pharmacist.put(f"/fhir/MedicationRequest/{med['id']}", json=on_hold, headers=FHIR_JSON)
    assert updated.status_code == 200, updated.get_data(as_text=True)
    assert updated.get_json()["statusReason"]["text"] == "Allergy to penicillin noted at the counter"
    assert as_role("clinician").put(f"/fhir/MedicationRequest/{med['id']}", json=on_hold, headers=FHIR_JSON).status_code in (403, 409)
    db_session.expire_all()
    assert db_session.get(MedicationRequest, med["id"]).status is MedicationRequestStatus.ON_HOLD


def test_the_pharmacy_pages_confirm_a_partial_dispense_and_a_return(
    as_role: Any, client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    first = prescribe(as_role, consultation_id, demo, quantity=3).get_json()
    second = prescribe(as_role, consultation_id, demo, code="R05DA01", quantity=1).get_json()
    sign_in(client, "pharmacist")
    queue = client.get("/dispense").get_data(as_text=True)
    assert f'id="quantity-{first["id"]}"' in queue and 'value="3"' in queue
    review = client.get(f"/dispense/{first['id']}?quantity=2")
    page = review.get_data(as_text=True)
    assert review.status_code == 200 and "Hand over 2 × Amoxicillin 500 mg capsules, pack of 21" in page
    assert db_session.scalars(select(MedicationDispense)).all() == []  # reviewing changes nothing
    done = client.post(f"/dispense/{first['id']}", data={"csrf_token": csrf_token_of(page), "quantity": "2"},
                       follow_redirects=True)
    assert "Dispensed 2 × Amoxicillin 500 mg capsules, pack of 21 to Alex Rivera; 1 still to supply." in done.get_data(as_text=True)
    assert [d.quantity for d in db_session.scalars(select(MedicationDispense))] == [2]
    too_many = client.post(f"/dispense/{first['id']}", data={"csrf_token": csrf_token_of(page), "quantity": "5"},
                           follow_redirects=True)
    assert "can dispense 1..1 more of this prescription, not 5" in too_many.get_data(as_text=True)

    form = client.get(f"/dispense/{second['id']}/return").get_data(as_text=True)
    assert 'for="return-reason"' in form
    empty = client.post(f"/dispense/{second['id']}/return", data={"csrf_token": csrf_token_of(form), "reason": ""})
    assert empty.status_code == 422 and "a reason is required" in empty.get_data(as_text=True)
    sent = client.post(f"/dispense/{second['id']}/return", data={"csrf_token": csrf_token_of(form),
                                                                  "reason": "Not for a patient under 12"},
                       follow_redirects=True)
    assert f"Prescription {second['id']} returned to the prescriber." in sent.get_data(as_text=True)
    db_session.expire_all()
    returned = db_session.get(MedicationRequest, second["id"])
    assert returned.status is MedicationRequestStatus.ON_HOLD and returned.status_reason == "Not for a patient under 12"

    clinician = client.application.test_client()
    sign_in(clinician, "clinician")
    consultation_page = clinician.get(f"/consultations/{consultation_id}").get_data(as_text=True)
    assert "Returned by the pharmacy: Not for a patient under 12" in consultation_page


def test_the_stock_page_lists_lots_with_expiry_and_restocks(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "pharmacist")
    page = client.get("/pharmacy/stock").get_data(as_text=True)
    assert 'id="stock"' in page and "J01CA04" in page
    expires = (utcnow().date() + timedelta(days=200)).isoformat()
    added = client.post("/pharmacy/stock", data={"csrf_token": csrf_token_of(page), "medication_code": "N02BE01",
                                                 "lot_number": "PCM-77", "quantity": "30", "expires_on": expires},
                        follow_redirects=True)
    text = added.get_data(as_text=True)
    assert "Received 30 × Paracetamol 500 mg tablets, lot PCM-77" in text and "PCM-77" in text.split('id="stock"')[1]
    bad = client.post("/pharmacy/stock", data={"csrf_token": csrf_token_of(page), "medication_code": "N02BE01",
                                               "lot_number": "X", "quantity": "3", "expires_on": "31/12/2030"})
    assert bad.status_code == 422 and "expiry date must be a date (YYYY-MM-DD)" in bad.get_data(as_text=True)
    assert client.application.test_client().get("/pharmacy/stock").status_code in (302, 401)
