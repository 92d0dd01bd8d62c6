"""The new-account form asks only for what the chosen role needs (without a script too: choosing
the role posts back for its fields), links a patient account to a record found by name or MRN
rather than an MRN typed by hand, takes a time zone only from the IANA list, and an optional email
address where the account's notifications are mailed."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import AuditEvent, Patient, User
from hospital.notifications import notify
from hospital.seed import DemoSeed
from tests.hospital.test_users import TEMPORARY, admin, post, unlinked_patient  # noqa: F401 (fixtures)
from tests.smtp import Mailbox, mail_through, smtp_server  # noqa: F401 (fixtures)


def shown(html: str, field_id: str) -> bool:
    """Whether the field is on the page and not inside a hidden fieldset."""
    match = re.search(rf'<fieldset[^>]*data-roles="[^"]*"([^>]*)>(?:(?!</fieldset>).)*id="{field_id}"', html, re.S)
    if match is None:
        return f'id="{field_id}"' in html
    return "hidden" not in match.group(1)


def test_the_form_shows_only_the_chosen_roles_fields(admin: FlaskClient, demo: DemoSeed) -> None:  # noqa: F811
    html = admin.get("/admin/users/new?role=patient").get_data(as_text=True)
    assert shown(html, "patient_query") and not shown(html, "given_name") and not shown(html, "organization_id")
    assert 'id="patient_mrn"' not in html  # no MRN typed by hand
    html = admin.get("/admin/users/new?role=clinician").get_data(as_text=True)
    assert shown(html, "given_name") and shown(html, "organization_id") and not shown(html, "patient_query")
    organisations = html.split('id="organization_id"')[1].split("</select>")[0]
    offered = re.findall(r'<option value="\d+"(?![^>]*hidden)[^>]*>([^<]+)</option>', organisations)
    assert offered and all("(clinic)" in o or "(hospital)" in o for o in offered)
    # Without a script, choosing the role posts back for its fields (nothing is created).
    back = post(admin, "/admin/users/new", step="choose_role", role="pharmacist", username="p.new")
    html = back.get_data(as_text=True)
    assert back.status_code == 200 and shown(html, "organization_id") and not shown(html, "given_name")
    assert 'value="p.new"' in html and "flash-error" not in html


def test_a_patient_account_links_a_record_found_by_search(
    admin: FlaskClient, db_session: Session, demo: DemoSeed, unlinked_patient: Patient  # noqa: F811
) -> None:
    found = post(admin, "/admin/users/new", step="find_patient", role="patient", username="kei", patient_query="nakam")
    html = found.get_data(as_text=True)
    assert found.status_code == 200
    assert re.search(r'<input type="radio" name="patient_mrn" value="MRN-5001"[^>]*id="patient-\d+"', html)
    assert "Kei Nakamura" in html
    # The demo patient already has an account: offered, but not choosable.
    html = post(admin, "/admin/users/new", step="find_patient", role="patient", patient_query=demo.patient.mrn).get_data(as_text=True)
    assert re.search(rf'value="{demo.patient.mrn}"[^>]*disabled', html) and "already has an account" in html
    searches = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "Patient", AuditEvent.action == "E",
        AuditEvent.user_id == demo.users["admin"].id)).all()
    assert len(searches) == 2 and all(e.description.startswith("patient search for an account") for e in searches)
    created = post(admin, "/admin/users/new", role="patient", username="kei", patient_mrn="MRN-5001",
                   temporary_password=TEMPORARY)
    assert created.status_code == 302
    user = db_session.scalars(select(User).where(User.username == "kei")).one()
    assert user.patient_id == unlinked_patient.id


def test_a_time_zone_comes_from_the_iana_list(admin: FlaskClient, db_session: Session, demo: DemoSeed) -> None:  # noqa: F811
    html = admin.get("/admin/users/new?role=clinician").get_data(as_text=True)
    assert 'list="zones"' in html and '<option value="Europe/Berlin">' in html
    assert len(re.findall(r'<option value="[A-Za-z_]+/[^"]+">', html.split('<datalist id="zones">')[1])) > 300
    form = dict(role="clinician", username="g.hopper", given_name="Grace", family_name="Hopper",
                organization_id=str(demo.clinic.id), temporary_password=TEMPORARY)
    refused = post(admin, "/admin/users/new", **form, timezone="Berlin time")
    assert refused.status_code == 422 and "is not an IANA time zone" in refused.get_data(as_text=True)
    assert post(admin, "/admin/users/new", **form, timezone="europe/berlin").status_code == 302
    user = db_session.scalars(select(User).where(User.username == "g.hopper")).one()
    assert user.timezone == "Europe/Berlin"
    page = admin.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert 'value="Europe/Berlin"' in page
    changed = post(admin, f"/admin/users/{user.id}", action="role", role="clinician", given_name="Grace",
                   family_name="Hopper", organization_id=str(demo.clinic.id), timezone="Asia/Tokyo")
    assert changed.status_code == 302
    db_session.refresh(user)
    assert user.timezone == "Asia/Tokyo"
    audited = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(user.id), AuditEvent.action == "U")).all()
    assert any("time zone" in (e.description or "") for e in audited)


def test_an_account_gets_an_optional_email_address_where_its_notifications_are_mailed(  # noqa: F811
    admin: FlaskClient, db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any,
) -> None:
    address = "P.Chen@pharmacy.example.org"
    html = admin.get("/admin/users/new?role=pharmacist").get_data(as_text=True)
    assert re.search(r'<input id="email" name="email" type="email"[^>]*maxlength="200"', html)
    form = dict(role="pharmacist", username="p.chen", organization_id=str(demo.pharmacy.id), temporary_password=TEMPORARY)
    refused = post(admin, "/admin/users/new", **form, email="p.chen at the pharmacy")
    assert refused.status_code == 422 and "is not an email address" in refused.get_data(as_text=True)
    assert 'value="p.chen at the pharmacy"' in refused.get_data(as_text=True), "the form comes back as typed"
    assert post(admin, "/admin/users/new", **form, email=f"  {address} ").status_code == 302
    user = db_session.scalars(select(User).where(User.username == "p.chen")).one()
    assert user.email == address
    page = admin.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert address in page.split('id="account-summary"')[1].split("</dl>")[0] and f'value="{address}"' in page
    # Not unique: a ward or a pharmacy may share one mailbox.
    assert post(admin, "/admin/users/new", **{**form, "username": "p.wang"}, email=address).status_code == 302

    # A staff notification is mailed there, once.
    mail_through(smtp_server.port)
    notify(db_session, [user], "prescription_returned", "prescription-returned:1", consultation_id=1)
    db_session.commit()
    assert [m["Subject"] for m in smtp_server.to(address)] == ["A prescription was returned by the pharmacy"]

    # Changed and removed with the role and profile, audited without the address itself.
    kept = dict(action="role", role="pharmacist", organization_id=str(demo.pharmacy.id))
    assert post(admin, f"/admin/users/{user.id}", **kept, email="pharmacy@example.org").status_code == 302
    db_session.refresh(user)
    assert user.email == "pharmacy@example.org"
    assert post(admin, f"/admin/users/{user.id}", **kept, email="").status_code == 302
    db_session.refresh(user)
    assert user.email is None
    audited = [e.description or "" for e in db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(user.id), AuditEvent.action == "U"))]
    assert any("email changed" in d for d in audited) and any("email removed" in d for d in audited)
    assert not any("example.org" in d for d in audited)
    assert "not set" in admin.get(f"/admin/users/{user.id}").get_data(as_text=True).split('id="account-summary"')[1]


def test_the_email_field_and_its_refusal_read_in_chinese(admin: FlaskClient, db_session: Session, demo: DemoSeed) -> None:  # noqa: F811
    demo.users["admin"].locale = "zh_CN"
    db_session.commit()
    html = admin.get("/admin/users/new?role=pharmacist").get_data(as_text=True)
    assert ">电子邮箱 <span" in html and "选填：通知将发送到此邮箱" in html
    refused = post(admin, "/admin/users/new", role="pharmacist", username="p.li", organization_id=str(demo.pharmacy.id),
                   temporary_password=TEMPORARY, email="p.li@pharmacy")
    assert refused.status_code == 422
    assert "&#39;p.li@pharmacy&#39; 不是有效的电子邮箱地址，请按 name@example.org 的格式填写" in refused.get_data(as_text=True)
