"""The clinician's referral form: the server-side patient search and registering a new patient,
who comes back chosen on the form."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import Patient
from hospital.seed import DEMO_PASSWORD, DemoSeed


def csrf_token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def sign_in(client: FlaskClient, username: str) -> None:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": DEMO_PASSWORD, "csrf_token": token})
    assert response.status_code == 302


def patient_options(html: str) -> list[str]:
    select_html = html.split('id="patient_id"')[1].split("</select>")[0]
    return re.findall(r'<option value="\d+"[^>]*>([^<]+)</option>', select_html)


def selected_option(html: str) -> str | None:
    match = re.search(r'<option value="\d+" selected>([^<]+)</option>', html.split('id="patient_id"')[1])
    return match.group(1) if match else None


def test_patient_search_filters_the_select_by_name_or_mrn(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    everyone = patient_options(client.get("/referrals/new").get_data(as_text=True))
    assert len(everyone) >= 2
    patient = demo.patient
    by_mrn = client.get(f"/referrals/new?q={patient.mrn.lower()}").get_data(as_text=True)
    assert patient_options(by_mrn) == [f"{patient.family_name}, {patient.given_name} ({patient.mrn})"]
    assert selected_option(by_mrn) == patient_options(by_mrn)[0]  # a single match is chosen for you
    by_name = client.get(f"/referrals/new?q={patient.given_name.upper()}+{patient.family_name}").get_data(as_text=True)
    assert f"({patient.mrn})" in " ".join(patient_options(by_name))
    nobody = client.get("/referrals/new?q=zz-no-such-person").get_data(as_text=True)
    assert patient_options(nobody) == [] and "No patient matches the search" in nobody


def test_register_a_new_patient_then_they_are_chosen(client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    sign_in(client, "clinician")
    page = client.get("/referrals/new").get_data(as_text=True)
    form = {"action": "register_patient", "given_name": "Noor", "family_name": "Haddad", "birth_date": "1961-04-02",
            "gender": "female", "mrn": "MRN-7777", "csrf_token": csrf_token_of(page)}
    assert client.post("/referrals/new", data={**form, "csrf_token": ""}).status_code == 403
    created = client.post("/referrals/new", data=form)
    assert created.status_code == 302
    patient = db_session.scalars(select(Patient).where(Patient.mrn == "MRN-7777")).one()
    assert (patient.given_name, patient.family_name, patient.gender, str(patient.birth_date)) == ("Noor", "Haddad", "female", "1961-04-02")
    assert created.headers["Location"].endswith(f"/referrals/new?patient_id={patient.id}")
    shown = client.get(created.headers["Location"]).get_data(as_text=True)
    assert "registered with MRN MRN-7777" in shown
    assert selected_option(shown) == "Haddad, Noor (MRN-7777)"

    again = client.post("/referrals/new", data=form)  # the same MRN twice
    # Not yet in this clinician's care (no referral yet), so the answer does not say whose MRN it is.
    assert again.status_code == 422 and "cannot be used" in again.get_data(as_text=True)
    assert 'value="Noor"' in again.get_data(as_text=True)  # what was typed is kept
    for bad in ({"birth_date": "02/04/1961"}, {"given_name": " "}, {"gender": "x"}, {"mrn": "M" * 65}):
        refused = client.post("/referrals/new", data={**form, "mrn": "", **bad})
        assert refused.status_code == 422 and "flash-error" in refused.get_data(as_text=True)

    # The referral itself still goes through, for the new patient.
    sent = client.post("/referrals/new", data={
        "patient_id": str(patient.id), "performer_organization_id": str(demo.imaging_centre.id), "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest", "priority": "routine", "reason": "Cough", "access_reason": "newly registered",
        "csrf_token": csrf_token_of(shown),
    })
    assert sent.status_code == 302 and sent.headers["Location"].endswith("/referrals")
