"""The administrator's users page: roles listed, a locked account unlocked (and audited), and
nobody else may do it."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.auth import MAX_FAILED_LOGINS
from hospital.errors import Forbidden
from hospital.models import AuditEvent
from hospital.seed import DEMO_PASSWORD, DemoSeed
from hospital.users import unlock_user
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
