"""Consultation, prescription and dispensing."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ai_services.models import ReportStatus, ReviewStatus
from followup.models import Consultation, FollowUpTask, StockLot
from followup.pharmacy import OutOfStock, dispense
from followup.service import Prescription, open_consultation, prescribe
from hospital.db import get_db
from hospital.models import JobRecord, User
from hospital.seed import DemoSeed, seed_demo
from tests.conftest import make_test_app
from tests.factories import make_preliminary_report


def signed_consultation(db_session: Session, demo: DemoSeed, box: tuple[int, int, int, int]) -> int:
    report = make_preliminary_report(db_session, demo, [box])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.status = ReportStatus.FINAL
    consultation = open_consultation(db_session, report.id)
    assert consultation is not None
    db_session.commit()
    return consultation.id


def test_large_confirmed_finding_makes_an_urgent_consultation_with_a_repeat_scan(db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 40, 40))  # 30 mm
    tasks = db_session.scalars(select(FollowUpTask).order_by(FollowUpTask.id)).all()
    assert [t.kind for t in tasks] == ["visit", "repeat-scan"]
    assert db_session.get(Consultation, consultation_id).priority == "urgent"


def test_prescribe_dispense_and_refuse_overdispense(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    clinician = as_role("clinician")
    body = {"medication_code": "J01CA04", "dosage_text": "500 mg tds", "quantity": 2, "refills": 1,
            "pharmacy_organization_id": demo.pharmacy.id}
    med = clinician.post(f"/api/consultations/{consultation_id}/prescriptions", json=body)
    assert med.status_code == 201
    med_id = med.get_json()["id"]
    pharmacist = as_role("pharmacist")
    assert [m["id"] for m in pharmacist.get("/api/dispense-queue").get_json()] == [med_id]
    assert pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 1}).status_code == 201
    assert pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 2}).status_code == 201
    over = pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 2})
    assert over.status_code == 400 and "1..1" in over.get_json()["detail"]
    assert pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 1}).status_code == 201
    assert pharmacist.get("/api/dispense-queue").get_json() == []
    events = db_session.scalars(select(JobRecord.event).where(JobRecord.event == "followup.medication_dispensed")).all()
    assert len(events) == 3
    assert as_role("imaging_staff").post(f"/api/medication-requests/{med_id}/dispense", json={}).status_code == 403


def test_finishing_needs_a_note_and_is_done_once(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    clinician = as_role("clinician")
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": " "}).status_code == 400
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": "Discussed."}).status_code == 200
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": "Again."}).status_code == 200
    finished = db_session.scalars(select(JobRecord).where(JobRecord.event == "followup.consultation_finished")).all()
    assert len(finished) == 1
    assert as_role("patient").get(f"/api/consultations/{consultation_id}").status_code == 200
    assert as_role("patient2").get(f"/api/consultations/{consultation_id}").status_code == 403


def test_out_of_stock_is_a_clear_error_and_restock_fixes_it(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    med = as_role("clinician").post(f"/api/consultations/{consultation_id}/prescriptions", json={
        "medication_code": "N02BE01", "dosage_text": "1 g qds", "quantity": 3, "pharmacy_organization_id": demo.pharmacy.id,
    }).get_json()
    pharmacist = as_role("pharmacist")
    refused = pharmacist.post(f"/api/medication-requests/{med['id']}/dispense", json={})
    assert refused.status_code == 409
    assert refused.get_json()["detail"] == "out of stock: N02BE01 has 0 unit(s) on hand, 3 needed"
    assert pharmacist.post("/api/pharmacy/stock", json={"medication_code": "N02BE01", "quantity": 3, "lot_number": "P-1",
                                                        "expires_on": "2999-12-31"}).status_code == 201
    assert pharmacist.post(f"/api/medication-requests/{med['id']}/dispense", json={}).status_code == 201
    stock = {s["medication_code"]: s["quantity_on_hand"] for s in pharmacist.get("/api/pharmacy/stock").get_json()}
    assert stock["N02BE01"] == 0 and stock["J01CA04"] == 100


def test_two_pharmacists_racing_for_the_last_unit(live_database: str, tmp_path: Any) -> None:
    app = make_test_app(live_database, tmp_path)
    db = get_db(app)
    with app.app_context(), db.transaction() as session:
        demo = seed_demo(session, app)
        consultation_id = signed_consultation(session, demo, (10, 10, 14, 14))
        clinician = demo.users["clinician"]
        request_ids = [prescribe(session, clinician, consultation_id, Prescription(
            "R05DA01", "as needed", 1, 0, demo.pharmacy.id)).id for _ in range(2)]
        session.execute(update(StockLot).where(StockLot.medication_code == "R05DA01").values(quantity_on_hand=1))
        pharmacist_id = demo.users["pharmacist"].id
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def dispense_one(request_id: int) -> None:
        with app.app_context():
            session = db.session()
            try:
                user = session.get(User, pharmacist_id)
                barrier.wait()
                dispense(session, user, request_id)
                session.commit()
                outcomes.append("dispensed")
            except OutOfStock:
                session.rollback()
                outcomes.append("out of stock")
            finally:
                session.close()

    threads = [threading.Thread(target=dispense_one, args=(rid,)) for rid in request_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["dispensed", "out of stock"]
    with db.session() as session:
        assert session.scalar(select(StockLot.quantity_on_hand).where(StockLot.medication_code == "R05DA01")) == 0


def test_secure_messages_between_clinician_and_patient(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    clinician, patient = as_role("clinician"), as_role("patient")
    url = f"/api/consultations/{consultation_id}/messages"
    assert clinician.post(url, json={"body": "Your scan shows a small nodule; let us talk."}).status_code == 201
    assert patient.post(url, json={"body": "Thank you, Thursday works."}).status_code == 201
    assert patient.post(url, json={"body": "   "}).status_code == 400
    assert as_role("patient2").post(url, json={"body": "hi"}).status_code == 403
    assert as_role("pharmacist").get(url).status_code == 403
    thread = patient.get(url).get_json()
    assert [(m["from"], m["to"]) for m in thread] == [("clinician", "patient"), ("patient", "clinician")]
    assert thread[0]["read_at"] is not None and thread[1]["read_at"] is None  # the patient read the clinician's
    consultation = clinician.get(f"/api/consultations/{consultation_id}").get_json()
    assert consultation["attachments"][0]["url"].endswith(f"/api/reports/{consultation['report_id']}")
    assert any("/image.png" in a["url"] for a in consultation["attachments"])
    # The same thread through FHIR: Communication resources, and a create through the same service.
    bundle = patient.get(f"/fhir/Communication?encounter=Encounter/{consultation_id}").get_json()
    assert [e["resource"]["payload"][0]["contentString"] for e in bundle["entry"]][1] == "Thank you, Thursday works."
    created = clinician.post("/fhir/Communication", json={
        "resourceType": "Communication", "status": "completed",
        "encounter": {"reference": f"Encounter/{consultation_id}"}, "payload": [{"contentString": "See you then."}]},
        headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.get_data(as_text=True)
    assert len(patient.get(url).get_json()) == 3
