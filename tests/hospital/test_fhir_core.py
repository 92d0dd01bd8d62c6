"""FHIR mappings of the core tables (Patient, Practitioner, Organization, AuditEvent) and the
generic search helpers in the registry."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Date, column, table
from sqlalchemy.dialects import postgresql

from hospital.fhir.core_resources import (
    MRN_SYSTEM,
    ORGANIZATION_KIND_SYSTEM,
    audit_event_to_fhir,
    fhir_gender,
    organization_to_fhir,
    patient_to_fhir,
    practitioner_to_fhir,
)
from hospital.fhir.registry import (
    FhirValidationError,
    ResourceMapping,
    check_own_resource,
    date_param,
    id_param,
    identifier_param,
    parse_date_search,
    validate_resource,
)
from hospital.models import AuditEvent, Organization, OrganizationKind, Patient, Practitioner, Role, User

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def make_patient(**overrides: object) -> Patient:
    values: dict[str, object] = dict(
        id=7, mrn="MRN-7", family_name="Rivera", given_name="Alex", birth_date=date(1968, 4, 12), gender="female",
        phone="+44 20 7946 0000", email="alex@example.org", created_at=NOW, updated_at=NOW,
    )
    values.update(overrides)
    return Patient(**values)


def test_patient_maps_identifier_name_gender_birthdate_and_telecom() -> None:
    resource = validate_resource(patient_to_fhir(make_patient()))

    assert resource["id"] == "7"
    assert resource["identifier"][0]["system"] == MRN_SYSTEM
    assert resource["identifier"][0]["value"] == "MRN-7"
    assert resource["name"] == [{"use": "official", "family": "Rivera", "given": ["Alex"]}]
    assert resource["gender"] == "female"
    assert resource["birthDate"] == "1968-04-12"
    assert {"system": "phone", "value": "+44 20 7946 0000"} in resource["telecom"]
    assert {"system": "email", "value": "alex@example.org"} in resource["telecom"]


def test_patient_without_contact_details_or_birth_date_is_still_valid() -> None:
    resource = validate_resource(patient_to_fhir(make_patient(phone=None, email=None, birth_date=None)))

    assert "telecom" not in resource
    assert "birthDate" not in resource


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("female", "female"), ("Male", "male"), ("F", "female"), ("other", "other"), ("", "unknown"),
     ("nonbinary", "unknown"), (None, "unknown")],
)
def test_gender_values_outside_fhir_become_unknown(stored: str | None, expected: str) -> None:
    assert fhir_gender(stored) == expected


def test_practitioner_maps_name() -> None:
    resource = validate_resource(practitioner_to_fhir(Practitioner(id=3, family_name="Lovelace", given_name="Ada")))

    assert resource["resourceType"] == "Practitioner"
    assert resource["name"][0]["family"] == "Lovelace"


def test_organization_type_comes_from_its_kind() -> None:
    organization = Organization(id=2, name="Riverside Imaging Centre", kind=OrganizationKind.IMAGING_CENTRE, ae_title="RIVERSIDE",
                                timezone="Europe/Berlin")

    resource = validate_resource(organization_to_fhir(organization))

    codings = resource["type"][0]["coding"]
    assert {"system": ORGANIZATION_KIND_SYSTEM, "code": "imaging_centre", "display": "Imaging centre"} in codings
    assert resource["identifier"][0]["value"] == "RIVERSIDE"
    assert resource["name"] == "Riverside Imaging Centre"
    assert resource["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/tz-code", "valueCode": "Europe/Berlin"}]


def test_audit_event_of_a_denied_read_names_agent_entity_and_patient() -> None:
    user = User(id=5, username="dr-ada", role=Role.CLINICIAN, practitioner_id=3)
    event = AuditEvent(
        id=11, recorded_at=NOW, user_id=5, action="R", entity_type="ServiceRequest", entity_id="4",
        patient_id=7, outcome=4, description="outside the user's patient compartment", source="fhir",
    )

    resource = validate_resource(audit_event_to_fhir(event, user))

    assert resource["type"]["system"] == "http://terminology.hl7.org/CodeSystem/audit-event-type"
    assert resource["type"]["code"] == "rest"
    assert resource["action"] == "R"
    assert resource["recorded"] == "2025-03-14T09:30:00Z"
    assert resource["outcome"] == "4"
    agent = resource["agent"][0]
    assert agent["requestor"] is True
    assert agent["who"]["reference"] == "Practitioner/3"
    assert "closed-loop-hospital" in resource["source"]["observer"]["display"]
    whats = [e["what"]["reference"] for e in resource["entity"]]
    assert whats == ["ServiceRequest/4", "Patient/7"]


@pytest.mark.parametrize("outcome", [0, 4, 8, 12])
def test_audit_outcome_is_the_fhir_code_as_a_string(outcome: int) -> None:
    event = AuditEvent(id=1, recorded_at=NOW, user_id=None, action="E", entity_type="Patient", entity_id=None,
                       patient_id=None, outcome=outcome, description="search", source="api")

    resource = validate_resource(audit_event_to_fhir(event))

    assert resource["outcome"] == str(outcome)
    assert resource["agent"][0]["who"]["display"] == "closed-loop-hospital (system)"


def test_audit_agent_of_a_patient_user_and_of_an_admin() -> None:
    event = AuditEvent(id=1, recorded_at=NOW, user_id=9, action="R", entity_type="Patient", entity_id="7",
                       patient_id=7, outcome=0, source="fhir")

    as_patient = validate_resource(audit_event_to_fhir(event, User(id=9, username="alex", role=Role.PATIENT, patient_id=7)))
    as_admin = validate_resource(audit_event_to_fhir(event, User(id=9, username="root", role=Role.ADMIN)))

    assert as_patient["agent"][0]["who"]["reference"] == "Patient/7"
    assert [e["what"]["reference"] for e in as_patient["entity"]] == ["Patient/7"]  # not listed twice
    assert as_admin["agent"][0]["who"] == {"display": "root"}


def test_mapping_read_roles_default_to_everyone() -> None:
    open_mapping = ResourceMapping("Patient", Patient, patient_to_fhir, Patient.id)
    admin_only = ResourceMapping("AuditEvent", AuditEvent, audit_event_to_fhir, AuditEvent.patient_id,
                                 read_roles=frozenset({Role.ADMIN}))

    assert open_mapping.readable_by(Role.PATIENT)
    assert admin_only.readable_by(Role.ADMIN)
    assert not admin_only.readable_by(Role.CLINICIAN)


@pytest.mark.parametrize(
    ("value", "prefix", "start", "end"),
    [
        ("2025", "eq", datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
        ("ge2025-12", "ge", datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
        ("lt2025-03-14", "lt", datetime(2025, 3, 14, tzinfo=UTC), datetime(2025, 3, 15, tzinfo=UTC)),
        ("gt2025-03-14T10:00:00+01:00", "gt", datetime(2025, 3, 14, 9, tzinfo=UTC), datetime(2025, 3, 14, 9, 0, 1, tzinfo=UTC)),
        ("2025-03-14T09:00:00Z", "eq", datetime(2025, 3, 14, 9, tzinfo=UTC), datetime(2025, 3, 14, 9, 0, 1, tzinfo=UTC)),
    ],
)
def test_date_search_values_cover_their_precision(value: str, prefix: str, start: datetime, end: datetime) -> None:
    assert parse_date_search(value) == (prefix, start, end)


@pytest.mark.parametrize("value", ["yesterday", "2025-13", "ge2025-02-30"])
def test_bad_date_search_values_are_rejected(value: str) -> None:
    with pytest.raises(ValueError):
        parse_date_search(value)


def test_date_param_on_a_timestamp_and_on_a_date_column() -> None:
    def sql(clause: object) -> str:
        return str(clause.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]

    on_timestamp = date_param(AuditEvent.recorded_at).clause("le2025-03-14")
    assert "audit_event.recorded_at < '2025-03-15 00:00:00+00:00'" in sql(on_timestamp)

    birth_date = table("patient", column("birth_date", Date)).c.birth_date
    on_date = date_param(birth_date).clause("1968-04")  # type: ignore[arg-type]
    assert sql(on_date) == "patient.birth_date >= '1968-04-01' AND patient.birth_date < '1968-05-01'"


def test_id_and_identifier_params() -> None:
    with pytest.raises(ValueError):
        id_param(Patient.id).clause("abc")
    param = identifier_param(Patient.mrn, MRN_SYSTEM)
    assert str(param.clause(f"{MRN_SYSTEM}|MRN-7").compile(compile_kwargs={"literal_binds": True})) == "patient.mrn = 'MRN-7'"
    assert str(param.clause("MRN-7").compile(compile_kwargs={"literal_binds": True})) == "patient.mrn = 'MRN-7'"
    assert str(param.clause("urn:other|MRN-7").compile(compile_kwargs={"literal_binds": True})) == "false"


# --- through the app -----------------------------------------------------------------------------


def test_patient_reads_own_record_and_not_anothers(as_role, demo) -> None:
    own = as_role("patient").get(f"/fhir/Patient/{demo.patient.id}")
    assert own.status_code == 200, own.get_data(as_text=True)
    body = validate_resource(own.get_json())
    assert body["identifier"][0]["value"] == demo.patient.mrn

    other = as_role("patient").get(f"/fhir/Patient/{demo.other_patient.id}")
    assert other.status_code == 403
    assert other.get_json()["resourceType"] == "OperationOutcome"


def test_search_patient_by_identifier_and_organization_by_type(as_role, demo) -> None:
    admin = as_role("admin")

    found = admin.get(f"/fhir/Patient?identifier={MRN_SYSTEM}|{demo.patient.mrn}")
    assert found.status_code == 200, found.get_data(as_text=True)
    bundle = validate_resource(found.get_json())
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == str(demo.patient.id)

    centres = validate_resource(admin.get("/fhir/Organization?type=imaging_centre").get_json())
    assert str(demo.imaging_centre.id) in {e["resource"]["id"] for e in centres["entry"]}

    practitioner = demo.users["clinician"].practitioner_id
    read = admin.get(f"/fhir/Practitioner/{practitioner}")
    assert read.status_code == 200
    validate_resource(read.get_json())


def test_audit_events_are_served_to_admins_only(as_role, demo) -> None:
    as_role("patient").get(f"/fhir/Patient/{demo.patient.id}")  # leaves an audit record

    searched = as_role("admin").get(f"/fhir/AuditEvent?patient=Patient/{demo.patient.id}&action=R")
    assert searched.status_code == 200, searched.get_data(as_text=True)
    bundle = validate_resource(searched.get_json())
    assert bundle["total"] >= 1
    event = bundle["entry"][0]["resource"]
    assert event["agent"][0]["who"]["reference"] == f"Patient/{demo.patient.id}"
    read = as_role("admin").get(f"/fhir/AuditEvent/{event['id']}")
    assert read.status_code == 200

    for role in ("clinician", "patient"):
        denied = as_role(role).get(f"/fhir/AuditEvent?patient=Patient/{demo.patient.id}")
        assert denied.status_code == 403, role
        assert denied.get_json()["resourceType"] == "OperationOutcome"
        assert as_role(role).get(f"/fhir/AuditEvent/{event['id']}").status_code == 403


def test_capability_statement_lists_every_mapped_type_and_its_search_params(as_role) -> None:
    response = as_role("admin").get("/fhir/metadata")
    assert response.status_code == 200, response.get_data(as_text=True)

    resources = {r["type"]: r for r in validate_resource(response.get_json())["rest"][0]["resource"]}

    assert set(resources) >= {
        "Patient", "Practitioner", "Organization", "AuditEvent", "ServiceRequest", "Schedule", "Slot", "Appointment",
        "ImagingStudy", "Device", "DiagnosticReport", "Observation", "Encounter", "CarePlan", "Task",
        "MedicationRequest", "MedicationDispense", "ChargeItemDefinition", "ChargeItem", "Invoice",
    }
    slot_params = {p["name"]: p["type"] for p in resources["Slot"]["searchParam"]}
    assert slot_params["start"] == "date"
    assert slot_params["schedule"] == "reference"


def test_a_read_is_audited_without_a_version_snapshot_of_its_audit_record(as_role, demo, db_session) -> None:
    """Issue 18: a read writes its audit row and nothing else. Audit rows are append-only, so
    their one version is the row itself (versionId 1 at its recorded time); no rendered copy of
    each audit record is stored beside it."""
    from sqlalchemy import func, select

    from hospital.models import ResourceVersion

    def counts() -> tuple[int, int]:
        db_session.expire_all()
        return (db_session.scalar(select(func.count()).select_from(AuditEvent)) or 0,
                db_session.scalar(select(func.count()).select_from(ResourceVersion)) or 0)

    patient = as_role("patient")
    patient.get(f"/fhir/Patient/{demo.patient.id}")  # the first read may version a record from before tracking
    audits, versions = counts()
    for _ in range(3):
        assert patient.get(f"/fhir/Patient/{demo.patient.id}").status_code == 200
    assert counts() == (audits + 3, versions)

    admin = as_role("admin")
    event = validate_resource(admin.get(f"/fhir/AuditEvent?patient=Patient/{demo.patient.id}&action=R").get_json())["entry"][0]["resource"]
    read = admin.get(f"/fhir/AuditEvent/{event['id']}")
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"' and read.get_json()["meta"]["versionId"] == "1"
    assert admin.get(f"/fhir/AuditEvent/{event['id']}/_history/1").get_json()["id"] == event["id"]
    assert admin.get(f"/fhir/AuditEvent/{event['id']}/_history/2").status_code == 404
    history = admin.get(f"/fhir/AuditEvent/{event['id']}/_history")
    assert history.status_code == 405 and history.get_json()["resourceType"] == "OperationOutcome"
    assert admin.get("/fhir/AuditEvent?_lastUpdated=ge2000-01-01&_sort=-_lastUpdated").status_code == 200
    statement = validate_resource(admin.get("/fhir/metadata").get_json())
    audit_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert {i["code"] for i in audit_entry["interaction"]} == {"read", "vread", "search-type"}
    assert audit_entry["readHistory"] is False


def test_the_capability_statement_is_built_once_per_base_url(client, monkeypatch) -> None:
    """Issue 18: /fhir/metadata is served from a cache per base URL (a client's Host header picks
    the URLs in it, and one host's statement is never served to another); the cache is bounded."""
    import hospital.fhir.routes as fhir_routes

    client.application.extensions.pop("hospital.fhir.capability", None)  # the app may have served it before
    built: list[str] = []
    build = fhir_routes._capability_statement
    monkeypatch.setattr(fhir_routes, "_capability_statement", lambda: built.append("x") or build())
    hosts = [f"h{i}.example" for i in range(fhir_routes.CAPABILITY_CACHE_SIZE + 3)]
    for _ in range(2):
        for host in hosts:
            response = client.get("/fhir/metadata", headers={"Host": host})
            assert response.status_code == 200
            assert response.get_json()["implementation"]["url"] == f"http://{host}/fhir"
    # Once per cached host; the hosts past the bound are built per request.
    assert len(built) == fhir_routes.CAPABILITY_CACHE_SIZE + 2 * 3


def test_our_own_resource_is_validated_without_a_round_trip_and_a_mapping_the_model_would_rewrite_fails_under_testing(
    app,  # type: ignore[no-untyped-def]
) -> None:
    # None fields are dropped and the rest is what we made: numbers and instants as written.
    ours = {"resourceType": "Observation", "status": "final", "code": {"text": "size"}, "subject": None,
            "valueQuantity": {"value": 12.5, "unit": "mm"}, "issued": "2026-12-04T10:00:00+00:00"}
    assert check_own_resource(ours) == {"resourceType": "Observation", "status": "final", "code": {"text": "size"},
                                        "valueQuantity": {"value": 12.5, "unit": "mm"},
                                        "issued": "2026-12-04T10:00:00+00:00"}
    # An invalid value is still refused, on every response.
    with pytest.raises(FhirValidationError, match="Patient"):
        check_own_resource({"resourceType": "Patient", "birthDate": "3 February 1980"})
    # Output the model accepts only by changing it (a boolean written as a string, an empty list,
    # which FHIR JSON forbids) would reach clients as it is: the suite, run under TESTING, refuses it.
    with app.app_context():
        for rewritten in ({"resourceType": "Patient", "active": "true"},
                          {"resourceType": "Patient", "name": [{"family": "Okafor", "given": []}]}):
            with pytest.raises(FhirValidationError, match="writes this resource differently"):
                check_own_resource(rewritten)
    # Outside TESTING (production), it is sent as validated.
    app.config["TESTING"] = False
    try:
        with app.app_context():
            assert check_own_resource({"resourceType": "Patient", "active": "true"}) == {
                "resourceType": "Patient", "active": "true"}
    finally:
        app.config["TESTING"] = True


def test_production_checks_one_own_resource_of_each_type_in_n_and_logs_and_counts_an_invalid_one(
    app, caplog,  # type: ignore[no-untyped-def]
) -> None:
    from hospital.metrics import FHIR_INVALID_OUTPUT

    assert app.config["FHIR_OUTPUT_CHECK_EVERY"] == 1  # the suite checks every resource
    invalid = {"resourceType": "Patient", "birthDate": "3 February 1980"}

    def failures() -> float:
        return FHIR_INVALID_OUTPUT.labels(resource_type="Patient")._value.get()

    app.config["FHIR_OUTPUT_CHECK_EVERY"] = 3
    try:
        with app.app_context():
            before = failures()
            with caplog.at_level(logging.ERROR, logger="hospital.fhir.registry"):
                sent = [check_own_resource(dict(invalid)) for _ in range(9)]
            # Every one is sent as it is (the unchecked ones could not be told apart anyway) ...
            assert sent == [invalid] * 9
            # ... and one in three was checked: each failure logged and counted, for an alert.
            logged = [r for r in caplog.records if "our own Patient failed FHIR validation" in r.getMessage()]
            assert len(logged) == 3
            assert failures() - before == 3
            # Valid output of another type is checked on its own count and passes silently.
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="hospital.fhir.registry"):
                for _ in range(4):
                    check_own_resource({"resourceType": "Observation", "status": "final", "code": {"text": "size"}})
            assert not caplog.records
    finally:
        app.config["FHIR_OUTPUT_CHECK_EVERY"] = 1
    with app.app_context(), pytest.raises(FhirValidationError):
        check_own_resource(dict(invalid))


def test_fhir_output_check_every_must_be_at_least_one() -> None:
    from hospital.config import load_config

    with pytest.raises(ValueError, match="FHIR_OUTPUT_CHECK_EVERY"):
        load_config({"FHIR_OUTPUT_CHECK_EVERY": 0})
    assert load_config({"TESTING": True})["FHIR_OUTPUT_CHECK_EVERY"] == 1
    assert load_config({})["FHIR_OUTPUT_CHECK_EVERY"] == 100
