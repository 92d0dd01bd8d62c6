"""The administrator's users page: roles and links listed, a locked account unlocked (and audited),
and nobody else may do it. Creating and changing accounts: tests/hospital/test_users.py."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.auth import MAX_FAILED_LOGINS
from hospital.errors import Forbidden
from hospital.models import AuditEvent, Role
from hospital.seed import DEMO_PASSWORD, DemoSeed
from hospital.users import NewAccount, create_user, unlock_user
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def test_admin_unlocks_a_locked_account_from_the_users_page(
    client: FlaskClient, app, db_session: Session, demo: DemoSeed
) -> None:
    pharmacist = demo.users["pharmacist"]
    pharmacist.failed_logins = MAX_FAILED_LOGINS
    db_session.commit()
    locked_out = app.test_client()
    assert locked_out.post("/api/auth/token", json={"username": "pharmacist", "password": DEMO_PASSWORD}).status_code == 401

    sign_in(client, "admin")
    page = client.get("/admin/users").get_data(as_text=True)
    row = page.split(f'data-user-id="{pharmacist.id}"')[1].split("</tr>")[0]
    assert "pharmacist" in row and "locked" in row and ">Unlock</button>" in row
    other_row = page.split(f'data-user-id="{demo.users["clinician"].id}"')[1].split("</tr>")[0]
    assert "clinician" in other_row and "Unlock" not in other_row
    form = {"user_id": str(pharmacist.id), "csrf_token": csrf_token_of(page)}
    assert client.post("/admin/users", data={**form, "csrf_token": ""}).status_code == 403
    done = client.post("/admin/users", data=form, follow_redirects=True)
    assert "pharmacist is unlocked" in done.get_data(as_text=True)
    db_session.refresh(pharmacist)
    assert pharmacist.failed_logins == 0
    assert locked_out.post("/api/auth/token", json={"username": "pharmacist", "password": DEMO_PASSWORD}).status_code == 201
    client.post("/admin/users", data=form)  # again: nothing to undo, no second audit row
    audits = db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.entity_type == "User", AuditEvent.entity_id == str(pharmacist.id), AuditEvent.description == "unlocked"))
    assert audits == 1


def test_only_an_admin_sees_users_or_unlocks(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    with pytest.raises(Forbidden):
        unlock_user(db_session, demo.users["clinician"], demo.users["pharmacist"].id)
    sign_in(client, "clinician")
    assert client.get("/admin/users").status_code == 403


def test_users_page_shows_each_accounts_links_and_status_with_a_way_to_manage_it(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    fresh = create_user(db_session, demo.users["admin"], NewAccount("fresh.admin", Role.ADMIN, "temporary-pass-0001"))
    db_session.commit()
    sign_in(client, "admin")
    page = client.get("/admin/users").get_data(as_text=True)
    assert 'href="/admin/users/new"' in page

    def row(user_id: int) -> str:
        return page.split(f'data-user-id="{user_id}"')[1].split("</tr>")[0]

    assert demo.patient.mrn in row(demo.users["patient"].id)
    assert "Ada Lovelace" in row(demo.users["clinician"].id) and "Hillside Family Practice" in row(demo.users["clinician"].id)
    assert "temporary password" in row(fresh.id) and "temporary password" not in row(demo.users["clinician"].id)
    for user in (*demo.users.values(), fresh):
        assert f'href="/admin/users/{user.id}"' in row(user.id)
    assert "user list" in db_session.scalars(select(AuditEvent.description).where(
        AuditEvent.entity_type == "User", AuditEvent.action == "E").order_by(AuditEvent.id.desc())).first()
