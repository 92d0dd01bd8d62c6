"""Account management (hospital.users and its pages): an administrator creates every kind of
account, changes roles, deactivates, reactivates and resets passwords; temporary passwords must be
changed before anything else works; tokens die with the rights they were issued under; the last
administrator stays; refusals are clear and leave nothing behind; nobody else may do any of it."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from hospital.auth import MAX_FAILED_LOGINS
from hospital.errors import Conflict, Forbidden, InvalidInput
from hospital.i18n import user_display_name
from hospital.models import ApiToken, AuditEvent, Organization, OrganizationKind, Patient, Practitioner, Role, User
from hospital.seed import DEMO_PASSWORD, DemoSeed
from hospital.users import (
    AccountProfile,
    NewAccount,
    change_role,
    create_user,
    deactivate_user,
    reactivate_user,
    reset_password,
)
from tests.conftest import login_api
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

TEMPORARY = "temporary-pass-0001"
CHOSEN = "my-own-secret-2024"

# Per role: a nav label on the home page and a page of that role the new account can open.
ROLE_HOME = {
    "patient": ("My invoices", "/invoices"),
    "clinician": ("New referral", "/referrals"),
    "radiologist": ("Reading list", "/reading"),
    "imaging_staff": ("Referrals to accept", "/incoming"),
    "pharmacist": ("Dispense queue", "/dispense"),
    "admin": ("Users", "/admin/users"),
}


def csrf(client: FlaskClient) -> str:
    return csrf_token_of(client.get("/login").get_data(as_text=True))


def post(client: FlaskClient, url: str, **fields: Any) -> TestResponse:
    """A form as a browser with scripts sends it: an action that asks first was agreed to in the
    dialog (`confirmed=yes`; without it the server asks on a page of its own, tested apart)."""
    return client.post(url, data={"csrf_token": csrf(client), "confirmed": "yes", **fields})


def sign_in_with(client: FlaskClient, username: str, password: str) -> TestResponse:
    return post(client, "/login", username=username, password=password)


def flash_error(page: str) -> str:
    assert "flash-error" in page, "no error was shown"
    return page.split("flash-error")[1].split("</p>")[0]


def count(session: Session, model: type[Any], *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture()
def admin(app: Flask, demo: DemoSeed) -> FlaskClient:
    client = app.test_client()
    sign_in(client, "admin")
    return client


@pytest.fixture()
def unlinked_patient(db_session: Session, demo: DemoSeed) -> Patient:
    """A patient record no account is linked to yet."""
    patient = Patient(mrn="MRN-5001", family_name="Nakamura", given_name="Kei")
    db_session.add(patient)
    db_session.commit()
    return patient


def profile_form(role: str, demo: DemoSeed, mrn: str = "MRN-5001") -> dict[str, str]:
    return {
        "patient": {"patient_mrn": mrn},
        "clinician": {"given_name": "Grace", "family_name": "Hopper", "organization_id": str(demo.clinic.id)},
        "radiologist": {"given_name": "Marie", "family_name": "Curie", "organization_id": str(demo.imaging_centre.id)},
        "imaging_staff": {"organization_id": str(demo.imaging_centre.id)},
        "pharmacist": {"organization_id": str(demo.pharmacy.id)},
        "admin": {},
    }[role]


@pytest.mark.parametrize("role", list(ROLE_HOME))
def test_each_kind_of_account_is_created_then_must_change_its_password_before_anything_else(
    app: Flask, admin: FlaskClient, db_session: Session, demo: DemoSeed, unlinked_patient: Patient, role: str
) -> None:
    username = f"new.{role}"
    created = post(admin, "/admin/users/new", username=username, role=role, temporary_password=TEMPORARY,
                   **profile_form(role, demo))
    assert created.status_code == 302, created.get_data(as_text=True)
    user = db_session.scalars(select(User).where(User.username == username)).one()
    assert created.headers["Location"].endswith(f"/admin/users/{user.id}")
    assert admin.get(created.headers["Location"]).status_code == 200
    assert (user.role.value, user.active, user.must_change_password, user.failed_logins) == (role, True, True, 0)
    expected_org = {"clinician": demo.clinic, "radiologist": demo.imaging_centre, "imaging_staff": demo.imaging_centre,
                    "pharmacist": demo.pharmacy}.get(role)
    assert user.organization_id == (expected_org.id if expected_org else None)
    assert user.patient_id == (unlinked_patient.id if role == "patient" else None)
    if role in ("clinician", "radiologist"):
        practitioner = db_session.get(Practitioner, user.practitioner_id)
        assert practitioner is not None and practitioner.organization_id == expected_org.id
        assert practitioner.display_name == {"clinician": "Grace Hopper", "radiologist": "Marie Curie"}[role]
    else:
        assert user.practitioner_id is None
    audit = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(user.id), AuditEvent.action == "C")).one()
    assert audit.user_id == demo.users["admin"].id and audit.description == f"created ({role})"
    assert audit.patient_id == user.patient_id

    newcomer = app.test_client()
    signed_in = sign_in_with(newcomer, username, TEMPORARY)
    assert signed_in.status_code == 302 and signed_in.headers["Location"].endswith("/account/password")
    for page in ("/", ROLE_HOME[role][1]):  # every page leads back to the password page...
        held = newcomer.get(page)
        assert held.status_code == 302 and held.headers["Location"].endswith("/account/password")
    api = newcomer.get("/api/me")  # ...and the APIs say why
    assert api.status_code == 403 and "/account/password" in api.get_json()["detail"]
    token = app.test_client().post("/api/auth/token", json={"username": username, "password": TEMPORARY})
    assert token.status_code == 403 and "must be changed" in token.get_json()["detail"]
    form_page = newcomer.get("/account/password").get_data(as_text=True)
    assert "set by an administrator" in form_page and "Dispense queue" not in form_page  # no nav while held

    mismatch = post(newcomer, "/account/password", current_password=TEMPORARY, new_password=CHOSEN,
                    confirm_password=CHOSEN + "x")
    assert mismatch.status_code == 422 and "not the same" in flash_error(mismatch.get_data(as_text=True))
    changed = post(newcomer, "/account/password", current_password=TEMPORARY, new_password=CHOSEN,
                   confirm_password=CHOSEN)
    assert changed.status_code == 302 and changed.headers["Location"].endswith("/")
    home = newcomer.get("/")
    assert home.status_code == 200
    # Greeted by the name their record holds (a practitioner's or patient's), else their username.
    assert f"Welcome, {user_display_name(user)}" in home.get_data(as_text=True)
    assert ROLE_HOME[role][0] in home.get_data(as_text=True)
    assert newcomer.get(ROLE_HOME[role][1]).status_code == 200
    db_session.refresh(user)
    assert user.must_change_password is False

    assert app.test_client().post("/api/auth/token", json={"username": username, "password": TEMPORARY}).status_code == 401
    me = login_api(app.test_client(), username, CHOSEN).get("/api/me").get_json()
    assert (me["role"], me["patient_id"], me["organization_id"]) == (role, user.patient_id, user.organization_id)


def test_a_role_change_revokes_tokens_and_the_browser_session_follows_at_once(
    app: Flask, admin: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    pharmacist = demo.users["pharmacist"]
    old_token = login_api(app.test_client(), "pharmacist")
    assert old_token.get("/api/dispense-queue").status_code == 200
    browser = app.test_client()
    sign_in(browser, "pharmacist")
    assert browser.get("/dispense").status_code == 200

    changed = post(admin, f"/admin/users/{pharmacist.id}", action="role", role="imaging_staff",
                   organization_id=str(demo.imaging_centre.id))
    assert changed.status_code == 302
    assert "Saved: pharmacist is an imaging staff" in admin.get(changed.headers["Location"]).get_data(as_text=True)
    db_session.refresh(pharmacist)
    assert (pharmacist.role, pharmacist.organization_id, pharmacist.practitioner_id) == (
        Role.IMAGING_STAFF, demo.imaging_centre.id, None)  # the pharmacist's practitioner link is cleared

    assert old_token.get("/api/me").status_code == 401  # the token issued before the change is dead
    assert count(db_session, ApiToken, ApiToken.user_id == pharmacist.id, ApiToken.revoked_at.is_(None)) == 0
    assert browser.get("/dispense").status_code == 403  # the cookie session has the new role at once
    assert browser.get("/incoming").status_code == 200
    audit = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(pharmacist.id), AuditEvent.action == "U")).one()
    assert audit.description == "role pharmacist -> imaging_staff; 1 token(s) revoked"

    # Saving the same role and profile again changes nothing: no new audit row, a new token lives on.
    new_token = login_api(app.test_client(), "pharmacist")
    post(admin, f"/admin/users/{pharmacist.id}", action="role", role="imaging_staff",
         organization_id=str(demo.imaging_centre.id))
    assert new_token.get("/api/me").get_json()["role"] == "imaging_staff"
    assert count(db_session, AuditEvent, AuditEvent.entity_id == str(pharmacist.id), AuditEvent.action == "U",
                 AuditEvent.entity_type == "User") == 1


def test_a_clinician_becoming_a_radiologist_keeps_their_practitioner_and_needs_a_centre(
    admin: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    clinician = demo.users["clinician"]
    practitioner_id = clinician.practitioner_id
    url = f"/admin/users/{clinician.id}"
    names = {"given_name": "Ada", "family_name": "Lovelace"}
    no_centre = post(admin, url, action="role", role="radiologist", **names)
    assert no_centre.status_code == 422
    assert "a radiologist account needs an organisation: an imaging centre" in flash_error(no_centre.get_data(as_text=True))
    assert 'value="radiologist" selected' in no_centre.get_data(as_text=True)  # the form keeps what was typed
    clinic = post(admin, url, action="role", role="radiologist", organization_id=str(demo.clinic.id), **names)
    assert "Hillside Family Practice is a clinic" in flash_error(clinic.get_data(as_text=True))
    no_name = post(admin, url, action="role", role="radiologist", organization_id=str(demo.imaging_centre.id),
                   given_name="Ada", family_name=" ")
    assert "needs a family name" in flash_error(no_name.get_data(as_text=True))
    db_session.refresh(clinician)
    assert (clinician.role, clinician.organization_id) == (Role.CLINICIAN, demo.clinic.id)  # untouched

    moved = post(admin, url, action="role", role="radiologist", organization_id=str(demo.imaging_centre.id), **names)
    assert moved.status_code == 302
    db_session.refresh(clinician)
    assert (clinician.role, clinician.practitioner_id, clinician.organization_id) == (
        Role.RADIOLOGIST, practitioner_id, demo.imaging_centre.id)
    practitioner = db_session.get(Practitioner, practitioner_id)
    db_session.refresh(practitioner)
    assert practitioner.organization_id == demo.imaging_centre.id

    to_admin = post(admin, url, action="role", role="admin", **names, organization_id=str(demo.clinic.id))
    assert to_admin.status_code == 302
    db_session.refresh(clinician)
    assert (clinician.role, clinician.practitioner_id, clinician.organization_id, clinician.patient_id) == (
        Role.ADMIN, None, None, None)  # an admin is linked to nothing; the ignored fields did not stick


def test_the_last_active_administrator_cannot_be_deactivated_or_demoted(
    admin: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    me = demo.users["admin"]
    url = f"/admin/users/{me.id}"
    alone = post(admin, url, action="deactivate")
    assert alone.status_code == 422 and "last active administrator" in flash_error(alone.get_data(as_text=True))
    demoted = post(admin, url, action="role", role="clinician", given_name="A", family_name="B")
    assert demoted.status_code == 422 and "last active administrator" in flash_error(demoted.get_data(as_text=True))
    db_session.refresh(me)
    assert (me.role, me.active) == (Role.ADMIN, True)

    second = create_user(db_session, me, NewAccount("second.admin", Role.ADMIN, TEMPORARY))
    db_session.commit()
    # With another administrator, still not oneself: another administrator must do it.
    self_off = post(admin, url, action="deactivate")
    assert "cannot deactivate your own account" in flash_error(self_off.get_data(as_text=True))
    self_demoted = post(admin, url, action="role", role="pharmacist", organization_id=str(demo.pharmacy.id))
    assert "cannot demote your own account" in flash_error(self_demoted.get_data(as_text=True))
    assert post(admin, f"/admin/users/{second.id}", action="deactivate").status_code == 302
    db_session.refresh(second)
    assert second.active is False

    # Two administrators acting at once: the second one's view of the first is stale. The rule is
    # checked against the rows, so the last active administrator still stays.
    with pytest.raises(Conflict, match="last active administrator"):
        deactivate_user(db_session, second, me.id)
    db_session.rollback()
    with pytest.raises(Conflict, match="last active administrator"):
        change_role(db_session, second, me.id, Role.PATIENT, AccountProfile(patient_mrn=demo.patient.mrn))
    db_session.rollback()
    db_session.refresh(me)
    assert (me.role, me.active) == (Role.ADMIN, True)


def test_deactivation_ends_tokens_and_sessions_and_reactivation_restores_sign_in(
    app: Flask, admin: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    clinician = demo.users["clinician"]
    token = login_api(app.test_client(), "clinician")
    browser = app.test_client()
    sign_in(browser, "clinician")
    assert post(admin, f"/admin/users/{clinician.id}", action="deactivate").status_code == 302
    assert token.get("/api/me").status_code == 401
    bounced = browser.get("/referrals")
    assert bounced.status_code == 302 and "/login" in bounced.headers["Location"]
    assert sign_in_with(app.test_client(), "clinician", DEMO_PASSWORD).status_code == 401
    assert "inactive" in admin.get("/admin/users").get_data(as_text=True).split(
        f'data-user-id="{clinician.id}"')[1].split("</tr>")[0]
    post(admin, f"/admin/users/{clinician.id}", action="deactivate")  # again: nothing more happens

    page = admin.get(f"/admin/users/{clinician.id}").get_data(as_text=True)
    assert "Reactivate clinician" in page and "Deactivate clinician" not in page
    assert post(admin, f"/admin/users/{clinician.id}", action="reactivate").status_code == 302
    assert sign_in_with(app.test_client(), "clinician", DEMO_PASSWORD).status_code == 302
    descriptions = db_session.scalars(select(AuditEvent.description).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(clinician.id), AuditEvent.action == "U",
    ).order_by(AuditEvent.id)).all()
    assert descriptions == ["deactivated; 1 token(s) revoked, 1 browser session(s) ended", "reactivated"]


def test_without_the_dialog_the_server_asks_before_deactivating_or_resetting(
    app: Flask, admin: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    """A browser that runs no script never saw the dialog: the server asks on a page of its own and
    changes nothing until the same form comes back agreed."""
    clinician = demo.users["clinician"]
    url = f"/admin/users/{clinician.id}"
    for fields, question in (
        ({"action": "deactivate"}, "Deactivate clinician? They are signed out everywhere"),
        ({"action": "reset_password", "temporary_password": TEMPORARY}, "Reset the password of clinician?"),
    ):
        asked = admin.post(url, data={"csrf_token": csrf(admin), **fields})
        page = asked.get_data(as_text=True)
        assert asked.status_code == 200 and question in page and "Please confirm" in page
        assert 'name="confirmed" value="yes"' in page and f'action="{url}"' in page
        db_session.refresh(clinician)
        assert (clinician.active, clinician.must_change_password) == (True, False)
    again = admin.post(url, data={"csrf_token": csrf_token_of(page), "action": "deactivate", "confirmed": "yes"})
    assert again.status_code == 302
    db_session.refresh(clinician)
    assert clinician.active is False


def test_a_password_reset_unlocks_revokes_and_forces_a_change(
    app: Flask, admin: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    radiologist = demo.users["radiologist"]
    token = login_api(app.test_client(), "radiologist")
    radiologist.failed_logins = MAX_FAILED_LOGINS
    db_session.commit()
    url = f"/admin/users/{radiologist.id}"
    assert "Unlock radiologist" in admin.get(url).get_data(as_text=True)
    short = post(admin, url, action="reset_password", temporary_password="short")
    assert short.status_code == 422 and "at least 12 characters" in flash_error(short.get_data(as_text=True))
    db_session.refresh(radiologist)
    assert (radiologist.failed_logins, radiologist.must_change_password) == (MAX_FAILED_LOGINS, False)

    assert post(admin, url, action="reset_password", temporary_password=TEMPORARY).status_code == 302
    db_session.refresh(radiologist)
    assert (radiologist.failed_logins, radiologist.must_change_password) == (0, True)
    assert token.get("/api/me").status_code == 401
    assert sign_in_with(app.test_client(), "radiologist", DEMO_PASSWORD).status_code == 401  # the old one is gone
    browser = app.test_client()
    assert sign_in_with(browser, "radiologist", TEMPORARY).headers["Location"].endswith("/account/password")
    assert post(browser, "/account/password", current_password=TEMPORARY, new_password=CHOSEN,
                confirm_password=CHOSEN).status_code == 302
    assert browser.get("/reading").status_code == 200


def test_a_user_changes_their_own_password(app: Flask, db_session: Session, demo: DemoSeed) -> None:
    token = login_api(app.test_client(), "clinician")
    browser = app.test_client()
    sign_in(browser, "clinician")
    page = browser.get("/account/password").get_data(as_text=True)
    assert 'for="current_password"' in page and 'for="new_password"' in page and 'for="confirm_password"' in page
    assert "set by an administrator" not in page
    refusals = {
        "not correct": dict(current_password="wrong-password-1", new_password=CHOSEN, confirm_password=CHOSEN),
        "at least 12": dict(current_password=DEMO_PASSWORD, new_password="short", confirm_password="short"),
        "must differ": dict(current_password=DEMO_PASSWORD, new_password=DEMO_PASSWORD, confirm_password=DEMO_PASSWORD),
        "username": dict(current_password=DEMO_PASSWORD, new_password="my-clinician-pw", confirm_password="my-clinician-pw"),
    }
    for message, form in refusals.items():
        refused = post(browser, "/account/password", **form)
        assert refused.status_code == 422 and message in flash_error(refused.get_data(as_text=True)), message
    assert token.get("/api/me").status_code == 200  # nothing changed yet
    assert post(browser, "/account/password", current_password=DEMO_PASSWORD, new_password=CHOSEN,
                confirm_password=CHOSEN).status_code == 302
    assert token.get("/api/me").status_code == 401
    assert login_api(app.test_client(), "clinician", CHOSEN).get("/api/me").get_json()["username"] == "clinician"
    audit = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(demo.users["clinician"].id))).one()
    assert (audit.user_id, audit.description) == (demo.users["clinician"].id, "own password changed; 1 token(s) revoked, 1 browser session(s) ended")


def test_a_token_of_an_account_that_must_change_its_password_is_refused(
    app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    # Not reachable through the services (setting the flag revokes tokens); a second guard all the same.
    token = login_api(app.test_client(), "patient")
    demo.users["patient"].must_change_password = True
    db_session.commit()
    refused = token.get("/api/me")
    assert refused.status_code == 403 and "/account/password" in refused.get_json()["detail"]
    assert token.get("/fhir/Patient").status_code == 403


@pytest.mark.parametrize(("fields", "message"), [
    ({"username": "Clinician"}, "the username 'Clinician' is already taken"),
    ({"username": "no spaces"}, "a username is 3 to 80 letters"),
    ({"username": "ab"}, "a username is 3 to 80 letters"),
    ({"temporary_password": "too-short"}, "at least 12 characters"),
    ({"temporary_password": "x-new.person-x"}, "must not contain the username"),
    ({"role": "superuser"}, "role must be one of"),
    ({"role": "patient", "patient_mrn": "MRN-0000"}, "no patient has the MRN 'MRN-0000'"),
    ({"role": "patient", "patient_mrn": ""}, "needs the MRN"),
    ({"role": "patient", "patient_mrn": "MRN-1001"}, "already has an active account ('patient')"),
    ({"role": "pharmacist", "organization_id": ""}, "a pharmacist account needs an organisation: a pharmacy"),
    ({"role": "imaging_staff", "organization_id": ""}, "an imaging staff account needs an organisation: an imaging centre"),
    ({"role": "imaging_staff", "organization_id": "999999"}, "organisation 999999 does not exist"),
    ({"role": "imaging_staff", "organization_id": "abc"}, "chosen from the list"),
    ({"role": "radiologist", "organization_id": "PHARMACY"}, "Central Pharmacy is a pharmacy"),
    ({"role": "clinician", "given_name": ""}, "needs a given name"),
    ({"role": "clinician", "family_name": "x" * 101}, "at most 100 characters"),
])
def test_a_refused_account_is_explained_and_nothing_is_written(
    admin: FlaskClient, db_session: Session, demo: DemoSeed, fields: dict[str, str], message: str
) -> None:
    form = {"username": "new.person", "role": "radiologist", "temporary_password": TEMPORARY,
            "given_name": "Rita", "family_name": "Levi", "organization_id": str(demo.imaging_centre.id)}
    form.update(fields)
    if form["organization_id"] == "PHARMACY":
        form["organization_id"] = str(demo.pharmacy.id)
    before = (count(db_session, User), count(db_session, Practitioner), count(db_session, AuditEvent,
              AuditEvent.entity_type == "User", AuditEvent.action == "C"))
    refused = post(admin, "/admin/users/new", **form)
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert message in flash_error(page).replace("&#39;", "'"), flash_error(page)
    assert f'value="{form["username"]}"' in page and TEMPORARY not in page  # kept as typed, but not the password
    assert (count(db_session, User), count(db_session, Practitioner), count(db_session, AuditEvent,
            AuditEvent.entity_type == "User", AuditEvent.action == "C")) == before


def test_a_patient_record_has_one_active_account(admin: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    old = demo.users["patient"]
    assert post(admin, f"/admin/users/{old.id}", action="deactivate").status_code == 302
    created = post(admin, "/admin/users/new", username="alex.r", role="patient", temporary_password=TEMPORARY,
                   patient_mrn=demo.patient.mrn)
    assert created.status_code == 302  # the record is free once its account is inactive
    again = post(admin, f"/admin/users/{old.id}", action="reactivate")
    assert again.status_code == 422 and "already has an active account ('alex.r')" in flash_error(
        again.get_data(as_text=True)).replace("&#39;", "'")
    db_session.refresh(old)
    assert old.active is False
    # Moving another patient account onto the record is refused the same way.
    other = demo.users["patient2"]
    moved = post(admin, f"/admin/users/{other.id}", action="role", role="patient", patient_mrn=demo.patient.mrn)
    assert moved.status_code == 422
    db_session.refresh(other)
    assert other.patient_id == demo.other_patient.id


def test_nobody_but_an_administrator_manages_accounts(app: Flask, db_session: Session, demo: DemoSeed) -> None:
    target = demo.users["pharmacist"]
    for username in ("clinician", "patient", "imaging_staff", "radiologist", "pharmacist"):
        client = app.test_client()
        sign_in(client, username)
        assert client.get("/admin/users/new").status_code == 403
        assert client.get(f"/admin/users/{target.id}").status_code == 403
        assert post(client, "/admin/users/new", username="sneaky.admin", role="admin",
                    temporary_password=TEMPORARY).status_code == 403
        assert post(client, f"/admin/users/{target.id}", action="role", role="admin").status_code == 403
        assert post(client, f"/admin/users/{target.id}", action="reset_password",
                    temporary_password=TEMPORARY).status_code == 403
    clinician = demo.users["clinician"]
    for call in (
        lambda: create_user(db_session, clinician, NewAccount("sneaky.admin", Role.ADMIN, TEMPORARY)),
        lambda: change_role(db_session, clinician, target.id, Role.ADMIN, AccountProfile()),
        lambda: deactivate_user(db_session, clinician, target.id),
        lambda: reactivate_user(db_session, clinician, target.id),
        lambda: reset_password(db_session, clinician, target.id, TEMPORARY),
    ):
        with pytest.raises(Forbidden):
            call()
    db_session.rollback()
    db_session.refresh(target)
    assert (target.role, target.active, target.must_change_password) == (Role.PHARMACIST, True, False)
    assert count(db_session, User, User.username == "sneaky.admin") == 0


def test_account_forms_need_the_csrf_token(admin: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    target = demo.users["pharmacist"]
    for url, form in (
        ("/admin/users/new", {"username": "forged.admin", "role": "admin", "temporary_password": TEMPORARY}),
        (f"/admin/users/{target.id}", {"action": "deactivate"}),
        (f"/admin/users/{target.id}", {"action": "reset_password", "temporary_password": TEMPORARY}),
        ("/account/password", {"current_password": DEMO_PASSWORD, "new_password": CHOSEN, "confirm_password": CHOSEN}),
    ):
        assert admin.post(url, data=form).status_code == 403
        assert admin.post(url, data={**form, "csrf_token": "forged"}).status_code == 403
    db_session.refresh(target)
    assert (target.active, target.must_change_password) == (True, False)
    assert count(db_session, User, User.username == "forged.admin") == 0
    assert sign_in_with(admin, "admin", DEMO_PASSWORD).status_code == 302  # the admin's password is unchanged


def test_seeded_demo_accounts_need_no_password_change(db_session: Session, demo: DemoSeed) -> None:
    assert all(not user.must_change_password for user in demo.users.values())
    assert count(db_session, User, User.must_change_password.is_(True)) == 0


def test_organisation_kinds_follow_how_the_stages_scope_each_role(db_session: Session, demo: DemoSeed) -> None:
    """A pharmacist is found by the pharmacy's queue, staff and radiologists by their centre."""
    admin = demo.users["admin"]
    hospital = Organization(name="General Hospital", kind=OrganizationKind.HOSPITAL)
    db_session.add(hospital)
    db_session.flush()
    clinician = create_user(db_session, admin, NewAccount("hospital.doc", Role.CLINICIAN, TEMPORARY, AccountProfile(
        given_name="Lin", family_name="Wu", organization_id=hospital.id)))
    assert clinician.organization_id == hospital.id and clinician.practitioner.organization_id == hospital.id
    solo = create_user(db_session, admin, NewAccount("solo.doc", Role.CLINICIAN, TEMPORARY, AccountProfile(
        given_name="Sol", family_name="Oh")))
    assert solo.organization_id is None and solo.practitioner is not None
    with pytest.raises(InvalidInput, match="is a hospital; a pharmacist account belongs to a pharmacy"):
        create_user(db_session, admin, NewAccount("bad.pharm", Role.PHARMACIST, TEMPORARY, AccountProfile(
            organization_id=hospital.id)))
    db_session.rollback()
