"""The FHIR REST API as a client sees it: the CapabilityStatement, versions (vread, history, ETag,
If-Match), search (paging, _sort, _summary, _include/_revinclude, POST _search, lenient
handling), writes through the stages' services, and transaction/batch Bundles."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy import func, select

from ai_services.models import Finding, FindingSource
from followup.models import ConsultationStatus, FollowUpTask, MedicationRequest, TaskStatus
from hospital.db import get_db
from hospital.fhir.core_resources import MRN_SYSTEM
from hospital.fhir.registry import validate_resource
from hospital.models import Patient
from imaging_orders.models import Appointment, Slot, SlotStatus
from referrals.fhir import ACCESS_REASON_EXTENSION, DICOM_MODALITY_SYSTEM
from referrals.models import Referral, ReferralStatus
from tests.factories import make_preliminary_report, make_referral
from tests.followup.test_fhir import insert_care
from tests.plans import statements_sent

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def new_patient(family: str = "Okafor", mrn: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": family, "given": ["Chidi"]}],
        "gender": "male",
        "birthDate": "1980-02-03",
        "telecom": [{"system": "email", "value": "chidi@example.org"}],
    }
    if mrn:
        resource["identifier"] = [{"system": MRN_SYSTEM, "value": mrn}]
    resource.update(extra)
    return resource


def new_service_request(demo: Any, patient_ref: str, modality: str = "CT") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": DICOM_MODALITY_SYSTEM, "code": modality}], "text": f"{modality} chest"},
        "subject": {"reference": patient_ref},
        "performer": [{"reference": f"Organization/{demo.imaging_centre.id}"}],
        "reasonCode": [{"text": "Persistent cough"}],
        "bodySite": [{"text": "CHEST"}],
        "extension": [{"url": ACCESS_REASON_EXTENSION, "valueString": "new patient referred to me"}],
    }


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def outcome(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def ids_of(bundle: dict[str, Any], mode: str = "match", type_name: str | None = None) -> list[str]:
    return [
        e["resource"]["id"] for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode and (type_name is None or e["resource"]["resourceType"] == type_name)
    ]


# --- CapabilityStatement -------------------------------------------------------------------------


def test_capability_statement_lists_what_works(as_role) -> None:
    statement = validate_resource(ok(as_role("clinician").get("/fhir/metadata")))
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    codes = {t: {i["code"] for i in r["interaction"]} for t, r in by_type.items()}

    assert {"read", "vread", "history-instance", "history-type", "search-type", "create", "update"} <= codes["Patient"]
    assert {"create", "update"} <= codes["ServiceRequest"]
    assert {"create", "update"} <= codes["Appointment"]
    assert "create" in codes["MedicationRequest"] and "update" in codes["Task"]
    assert not {"create", "update", "delete"} & codes["Observation"]
    assert {"create", "search-type"} <= codes["Communication"]
    assert by_type["Patient"]["versioning"] == "versioned"
    assert "DiagnosticReport:result" in by_type["DiagnosticReport"]["searchInclude"]
    assert "ServiceRequest:patient" in by_type["ServiceRequest"]["searchInclude"]
    assert "DiagnosticReport:based-on" in by_type["ServiceRequest"]["searchRevInclude"]
    assert "Observation:derived-from" in by_type["ImagingStudy"]["searchRevInclude"]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}


# --- create, read, versions, update --------------------------------------------------------------


def test_patient_create_read_update_with_versions_and_if_match(as_role, demo) -> None:
    clinician = as_role("clinician")
    created = clinician.post("/fhir/Patient", json=new_patient(mrn="MRN-FHIR-1"), headers=FHIR_JSON)
    body = ok(created, 201)
    patient_id = body["id"]
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/fhir/Patient/{patient_id}/_history/1")
    assert body["meta"]["versionId"] == "1"

    admin = as_role("admin")  # the clinician has no referral for this patient yet
    read = admin.get(f"/fhir/Patient/{patient_id}")
    assert ok(read)["name"][0]["family"] == "Okafor"
    assert read.headers["ETag"] == 'W/"1"'

    changed = {**ok(read), "name": [{"use": "official", "family": "Okafor-Ade", "given": ["Chidi"]}]}
    updated = admin.put(f"/fhir/Patient/{patient_id}", json=changed, headers={"If-Match": 'W/"1"'})
    assert ok(updated)["meta"]["versionId"] == "2"
    assert updated.headers["ETag"] == 'W/"2"'

    stale = admin.put(f"/fhir/Patient/{patient_id}", json=changed, headers={"If-Match": 'W/"1"'})
    assert "stale" in outcome(stale, 412)

    first = ok(admin.get(f"/fhir/Patient/{patient_id}/_history/1"))
    assert first["name"][0]["family"] == "Okafor" and first["meta"]["versionId"] == "1"
    assert admin.get(f"/fhir/Patient/{patient_id}/_history/9").status_code == 404

    history = validate_resource(ok(admin.get(f"/fhir/Patient/{patient_id}/_history")))
    assert history["type"] == "history" and history["total"] == 2
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]

    type_history = ok(admin.get("/fhir/Patient/_history?_count=1"))
    assert type_history["total"] >= 3  # the two demo patients and both versions of this one
    assert len(type_history["entry"]) == 1 and any(link["relation"] == "next" for link in type_history["link"])

    minimal = admin.put(f"/fhir/Patient/{patient_id}", json=changed, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.get_data() == b""


def test_history_is_authorised_by_patient_compartment(as_role, demo) -> None:
    own = f"/fhir/Patient/{demo.patient.id}"
    assert ok(as_role("patient").get(f"{own}/_history"))["total"] >= 1
    assert ok(as_role("patient").get(f"{own}/_history/1"))["id"] == str(demo.patient.id)
    outcome(as_role("patient2").get(f"{own}/_history"), 403)
    outcome(as_role("patient2").get(f"{own}/_history/1"), 403)
    type_history = ok(as_role("patient2").get("/fhir/Patient/_history"))
    assert {e["resource"]["id"] for e in type_history["entry"]} == {str(demo.other_patient.id)}


def test_invalid_forbidden_and_unsupported_writes(as_role, demo) -> None:
    clinician = as_role("clinician")
    message = outcome(clinician.post("/fhir/Patient", json=new_patient(birthDate="3rd of May")), 400)
    assert "birthDate" in message
    outcome(clinician.post("/fhir/Patient", json={"resourceType": "Observation", "status": "final"}), 400)
    outcome(as_role("patient").post("/fhir/Patient", json=new_patient()), 403)
    outcome(clinician.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final",
                                                      "code": {"text": "x"}}), 405)
    assert clinician.delete(f"/fhir/Patient/{demo.patient.id}").status_code == 405


def test_conditional_create_finds_the_existing_patient(as_role, demo) -> None:
    clinician = as_role("clinician")
    first = ok(clinician.post("/fhir/Patient", json=new_patient(mrn="MRN-COND-1")), 201)
    again = clinician.post(
        "/fhir/Patient", json=new_patient(mrn="MRN-COND-1"), headers={"If-None-Exist": f"identifier={MRN_SYSTEM}|MRN-COND-1"}
    )
    # The match is outside the clinician's compartment (no referral yet): it is not revealed,
    # and creating a second record with that MRN is refused without naming the MRN or the record.
    outcome(again, 422)
    for refused in (again, clinician.post("/fhir/Patient", json=new_patient(mrn=demo.other_patient.mrn),
                                          headers={"If-None-Exist": f"identifier={demo.other_patient.mrn}"})):
        assert refused.status_code == 422
        body = refused.get_data(as_text=True)
        assert "MRN-COND-1" not in body and demo.other_patient.mrn not in body and "already exists" not in body
        assert f"Patient/{first['id']}" not in body and "Location" not in refused.headers
    admin_again = as_role("admin").post(
        "/fhir/Patient", json=new_patient(mrn="MRN-COND-1"), headers={"If-None-Exist": "identifier=MRN-COND-1"}
    )
    assert ok(admin_again, 200)["id"] == first["id"]


def test_service_request_create_and_revoke_go_through_the_referral_service(as_role, demo, db_session) -> None:
    clinician = as_role("clinician")
    created = ok(clinician.post("/fhir/ServiceRequest", json=new_service_request(demo, f"Patient/{demo.patient.id}")), 201)
    referral = db_session.get(Referral, int(created["id"]))
    assert referral.status is ReferralStatus.ACTIVE and referral.priority.value == "urgent"
    assert referral.requester_id == demo.users["clinician"].practitioner_id

    outcome(clinician.post("/fhir/ServiceRequest", json=new_service_request(demo, f"Patient/{demo.patient.id}", "XX")), 400)
    outcome(as_role("patient").post("/fhir/ServiceRequest", json=new_service_request(demo, f"Patient/{demo.patient.id}")), 403)

    moved = {**created, "performer": [{"reference": f"Organization/{demo.pharmacy.id}"}]}
    outcome(clinician.put(f"/fhir/ServiceRequest/{created['id']}", json=moved), 422)
    revoked = {**created, "status": "revoked", "note": [{"text": "Patient recovered"}]}
    done = ok(clinician.put(f"/fhir/ServiceRequest/{created['id']}", json=revoked, headers={"If-Match": 'W/"1"'}))
    assert done["status"] == "revoked" and done["meta"]["versionId"] == "2"
    db_session.refresh(referral)
    assert referral.status is ReferralStatus.CANCELLED and referral.status_reason == "Patient recovered"


def test_appointment_booked_from_a_slot_and_the_referral(as_role, demo, db_session) -> None:
    referral = make_referral(db_session, demo, ReferralStatus.ACCEPTED)
    slot = db_session.scalars(select(Slot).where(Slot.status == SlotStatus.FREE).order_by(Slot.start).offset(30)).first()
    db_session.commit()
    resource = {
        "resourceType": "Appointment", "status": "booked",
        "basedOn": [{"reference": f"ServiceRequest/{referral.id}"}], "slot": [{"reference": f"Slot/{slot.id}"}],
        "participant": [{"actor": {"reference": f"Patient/{demo.patient.id}"}, "status": "accepted"}],
    }
    booked = ok(as_role("patient").post("/fhir/Appointment", json=resource), 201)
    assert booked["start"] and db_session.get(Appointment, int(booked["id"])).slot_id == slot.id
    outcome(as_role("patient").post("/fhir/Appointment", json=resource), 409)  # slot taken now


def test_medication_request_and_task_through_the_followup_service(as_role, demo, db_session) -> None:
    consultation, _plan, task, _request, _dispense = insert_care(db_session, demo)
    # Still open: a finished consultation takes no new prescription (tests/followup/test_pharmacy.py).
    consultation.status, consultation.ended_at = ConsultationStatus.IN_PROGRESS, None
    db_session.commit()
    clinician = as_role("clinician")
    prescription = {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"code": "R05DA09", "display": "Dextromethorphan"}]},
        "subject": {"reference": f"Patient/{demo.patient.id}"},
        "encounter": {"reference": f"Encounter/{consultation.id}"},
        "dosageInstruction": [{"text": "10 ml three times a day"}],
        "dispenseRequest": {"quantity": {"value": 1}, "numberOfRepeatsAllowed": 1,
                            "performer": {"reference": f"Organization/{demo.pharmacy.id}"}},
    }
    created = ok(clinician.post("/fhir/MedicationRequest", json=prescription), 201)
    row = db_session.get(MedicationRequest, int(created["id"]))
    assert row.medication_code == "R05DA09" and row.refills == 1
    outcome(as_role("pharmacist").post("/fhir/MedicationRequest", json=prescription), 403)

    current = ok(clinician.get(f"/fhir/Task/{task.id}"))
    done = ok(clinician.put(f"/fhir/Task/{task.id}", json={**current, "status": "completed"}))
    assert done["status"] == "completed"
    db_session.expire_all()
    assert db_session.get(FollowUpTask, task.id).status is TaskStatus.COMPLETED
    outcome(clinician.put(f"/fhir/Task/{task.id}", json={**current, "status": "requested"}), 409)


# --- search --------------------------------------------------------------------------------------


def test_paging_through_two_thousand_observations_sees_each_once(as_role, demo, db_session) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 20, 20)])
    template = db_session.scalars(select(Finding).where(Finding.report_id == report.id)).one()
    db_session.add_all(
        Finding(report_id=report.id, patient_id=demo.patient.id, source=FindingSource.AI,
                sop_instance_uid=template.sop_instance_uid, slice_index=0, x0=1, y0=1, x1=5 + n % 7, y1=5,
                diameter_mm=4.0, confidence=0.5)
        for n in range(1999)
    )
    db_session.commit()
    radiologist = as_role("radiologist")
    url: str | None = f"/fhir/Observation?patient=Patient/{demo.patient.id}&_count=50&_total=accurate"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = ok(radiologist.get(url))
        assert bundle["total"] == 2000  # counted on every page, as _total=accurate asks
        seen.extend(ids_of(bundle))
        url = next((relative(link["url"]) for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
    assert pages == 40 and len(seen) == 2000 and len(set(seen)) == 2000
    # Without _total, a match over the count limit (1000) is not counted: Bundle.total is left out.
    assert "total" not in ok(radiologist.get(f"/fhir/Observation?patient={demo.patient.id}&_count=50"))
    # An old offset link (from before cursors) is still served, with its previous page.
    previous = ok(radiologist.get(f"/fhir/Observation?patient={demo.patient.id}&_count=50&_page=3"))
    assert ids_of(previous) == seen[100:150]
    back = next(relative(link["url"]) for link in previous["link"] if link["relation"] == "previous")
    assert ids_of(ok(radiologist.get(back))) == seen[50:100]
    onward = next(relative(link["url"]) for link in previous["link"] if link["relation"] == "next")
    assert ids_of(ok(radiologist.get(onward))) == seen[150:200]

    descending = ok(radiologist.get(f"/fhir/Observation?patient={demo.patient.id}&_count=5&_sort=-_id"))
    assert ids_of(descending) == sorted(seen, key=int, reverse=True)[:5]
    summary = ok(radiologist.get("/fhir/Observation?_summary=count"))
    assert summary["total"] == 2000 and "entry" not in summary


def test_a_search_page_loads_the_rows_its_resources_read_with_it_not_one_query_per_parent(
    as_role, demo, db_session, app,
) -> None:
    # An Observation's status is its report's: the page of findings brings their reports along
    # (ResourceMapping.load_options), instead of one query per report on the page.
    reports = [make_preliminary_report(db_session, demo, [(10, 10, 20, 20), (30, 30, 42, 40)]) for _ in range(4)]
    db_session.commit()
    radiologist = as_role("radiologist")
    radiologist.get("/api/me")  # signed in and its token known before counting
    with statements_sent(get_db(app).engine, {"diagnostic_report"}) as sent:
        bundle = ok(radiologist.get(f"/fhir/Observation?patient={demo.patient.id}&_count=20"))
    assert len(bundle["entry"]) == 8
    assert {e["resource"]["derivedFrom"][0]["reference"] for e in bundle["entry"]} == {
        f"ImagingStudy/{r.study_id}" for r in reports}
    assert len(sent) == 1, [statement for statement, _ in sent]
    with statements_sent(get_db(app).engine, {"diagnostic_report"}) as sent:
        read = ok(radiologist.get(f"/fhir/Observation/{bundle['entry'][0]['resource']['id']}"))
    assert read["status"] == "preliminary" and len(sent) == 1


def test_an_id_is_ours_only_as_we_write_it(as_role, demo) -> None:
    # "007" or a full-width digit is not another spelling of Patient/7, and an id past the keys'
    # range is not a value the database refuses: each names no resource here.
    admin = as_role("admin")
    patient = demo.patient.id
    assert ok(admin.get(f"/fhir/Patient/{patient}"))["id"] == str(patient)
    full_width = "".join(chr(0xFF10 + int(digit)) for digit in str(patient))  # int() reads it as the id
    for odd in (f"00{patient}", full_width, "99999999999999", "2147483648", f"+{patient}"):
        for url in (f"/fhir/Patient/{odd}", f"/fhir/Patient/{odd}/_history", f"/fhir/Patient/{odd}/_history/1",
                    f"/fhir/Patient/{patient}/_history/0{odd}"):
            assert outcome(admin.get(url), 404)
    # As a search value, it is a bad value (400), not an empty match.
    assert outcome(admin.get("/fhir/Patient?_id=99999999999999"), 400)
    assert ok(admin.get(f"/fhir/Patient?_id={patient}"))["total"] == 1


def test_sort_by_date_and_last_updated(as_role, demo, db_session) -> None:
    first = make_referral(db_session, demo)
    second = make_referral(db_session, demo)
    db_session.commit()
    clinician = as_role("clinician")
    assert ids_of(ok(clinician.get("/fhir/ServiceRequest?_sort=-authored")))[:2] == [str(second.id), str(first.id)]
    assert ids_of(ok(clinician.get("/fhir/ServiceRequest?_sort=authored,_id")))[-2:] == [str(first.id), str(second.id)]
    ok(clinician.put(f"/fhir/ServiceRequest/{first.id}", json={
        **ok(clinician.get(f"/fhir/ServiceRequest/{first.id}")), "status": "revoked"}))
    assert ids_of(ok(clinician.get("/fhir/ServiceRequest?_sort=-_lastUpdated")))[0] == str(first.id)
    assert "cannot sort" in outcome(clinician.get("/fhir/ServiceRequest?_sort=reason"), 400)


def test_last_updated_search(as_role, demo, db_session) -> None:
    first = make_referral(db_session, demo)
    db_session.commit()
    clinician = as_role("clinician")
    changed = quote(ok(clinician.get(f"/fhir/ServiceRequest/{first.id}"))["meta"]["lastUpdated"])
    assert ids_of(ok(clinician.get(f"/fhir/ServiceRequest?_lastUpdated=ge{changed}"))) == [str(first.id)]
    assert ids_of(ok(clinician.get(f"/fhir/ServiceRequest?_lastUpdated=lt{changed}"))) == []
    assert ids_of(ok(clinician.get("/fhir/ServiceRequest?_lastUpdated=gt2999-01-01"))) == []
    assert "not a FHIR date" in outcome(clinician.get("/fhir/ServiceRequest?_lastUpdated=yesterday"), 400)


def test_include_and_revinclude_respect_roles_and_compartments(as_role, demo, db_session) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 20, 20), (30, 30, 42, 40)])
    db_session.commit()
    radiologist = as_role("radiologist")
    bundle = validate_resource(ok(radiologist.get(f"/fhir/DiagnosticReport?_id={report.id}&_include=DiagnosticReport:result")))
    assert ids_of(bundle) == [str(report.id)]
    assert len(ids_of(bundle, "include", "Observation")) == 2

    clinician = as_role("clinician")
    with_patient = ok(clinician.get(f"/fhir/ServiceRequest?_id={report.referral_id}&_include=ServiceRequest:patient"))
    assert ids_of(with_patient, "include", "Patient") == [str(demo.patient.id)]
    with_reports = ok(clinician.get(f"/fhir/ServiceRequest?_id={report.referral_id}&_revinclude=DiagnosticReport:based-on"))
    assert ids_of(with_reports, "include", "DiagnosticReport") == [str(report.id)]
    with_findings = ok(radiologist.get(f"/fhir/ImagingStudy?_id={report.study_id}&_revinclude=Observation:derived-from"))
    assert len(ids_of(with_findings, "include", "Observation")) == 2

    # The audit trail is for administrators: included AuditEvents are left out for anyone else.
    audit = f"/fhir/Patient?_id={demo.patient.id}&_revinclude=AuditEvent:patient"
    assert ids_of(ok(as_role("admin").get(audit)), "include", "AuditEvent")
    assert not ids_of(ok(clinician.get(audit)), "include", "AuditEvent")
    outcome(clinician.get("/fhir/ServiceRequest?_include=ServiceRequest:reason"), 400)


def test_post_search_unknown_params_and_lenient_handling(as_role, demo) -> None:
    patient = as_role("patient")
    posted = ok(patient.post("/fhir/Patient/_search", data={"identifier": "MRN-1001"}))
    assert ids_of(posted) == [str(demo.patient.id)]
    assert "unknown search parameter" in outcome(patient.get("/fhir/Patient?colour=blue"), 400)
    lenient = ok(patient.get("/fhir/Patient?colour=blue", headers={"Prefer": "handling=lenient"}))
    assert ids_of(lenient) == [str(demo.patient.id)]
    assert "colour" not in lenient["link"][0]["url"]


# --- transaction and batch -----------------------------------------------------------------------


def transaction(demo: Any, modality: str = "CT", kind: str = "transaction", mrn: str = "MRN-TX-1") -> dict[str, Any]:
    patient_url = "urn:uuid:0b6b1a4e-6c44-4f57-9e1b-2f7f8c0f3a11"
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {  # the referral first: the server orders creates by their references
                "fullUrl": "urn:uuid:7d1c1d55-2a7e-4d2b-a0a4-0c1b57d0a2b9",
                "resource": new_service_request(demo, patient_url, modality),
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {"fullUrl": patient_url, "resource": new_patient(mrn=mrn), "request": {"method": "POST", "url": "Patient"}},
        ],
    }


def test_transaction_creates_patient_and_referral_atomically(as_role, demo, db_session) -> None:
    clinician = as_role("clinician")
    response = validate_resource(ok(clinician.post("/fhir", json=transaction(demo))))
    assert response["type"] == "transaction-response"
    referral_entry, patient_entry = response["entry"]
    assert patient_entry["response"]["status"].startswith("201")
    patient_id = patient_entry["resource"]["id"]
    assert referral_entry["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    assert referral_entry["response"]["location"].startswith("ServiceRequest/")
    # Now the clinician's referral puts the new patient in their compartment.
    assert ok(clinician.get(f"/fhir/Patient/{patient_id}"))["identifier"][0]["value"] == "MRN-TX-1"

    failed = clinician.post("/fhir", json=transaction(demo, modality="XX", mrn="MRN-TX-2"))
    assert "modality" in outcome(failed, 400)
    assert db_session.scalar(select(func.count()).select_from(Patient).where(Patient.mrn == "MRN-TX-2")) == 0


def test_batch_runs_each_entry_on_its_own(as_role, demo, db_session) -> None:
    bundle = transaction(demo, kind="batch", mrn="MRN-BATCH-1")
    bundle["entry"][0]["resource"]["subject"] = {"reference": f"Patient/{demo.patient.id}"}
    bundle["entry"][0]["resource"]["code"]["coding"][0]["code"] = "XX"
    bundle["entry"].append({"request": {"method": "GET", "url": f"Organization/{demo.pharmacy.id}"}})
    response = ok(as_role("clinician").post("/fhir", json=bundle))
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses[0] == "400" and statuses[1].startswith("201") and statuses[2].startswith("200")
    assert db_session.scalar(select(func.count()).select_from(Patient).where(Patient.mrn == "MRN-BATCH-1")) == 1


def test_delete_is_refused_with_the_workflow_alternative(as_role, demo, db_session) -> None:
    referral = make_referral(db_session, demo)
    db_session.commit()
    clinician = as_role("clinician")
    refused = clinician.delete(f"/fhir/ServiceRequest/{referral.id}")
    assert "status 'revoked'" in outcome(refused, 405)
    assert ok(clinician.get(f"/fhir/ServiceRequest/{referral.id}"))["id"] == str(referral.id)
    assert outcome(clinician.delete("/fhir/Spaceship/1"), 404)
