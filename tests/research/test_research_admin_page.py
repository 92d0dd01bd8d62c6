"""The research database's page for administrators: counts of what the next version would take,
making a version (asked first), the versions with what changed, and data-use agreements recorded
and revoked; in both languages; nobody else opens it."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.seed import DemoSeed
from research.models import DatasetVersion, DataUseAgreement
from tests.referrals.test_referral_pages import csrf_token_of, sign_in
from tests.research.test_contributor_uploads import study_files, upload


def test_an_administrator_makes_a_version_and_keeps_the_agreements(
    app: Flask, client: FlaskClient, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    assert upload(as_role, study_files()).status_code == 201
    sign_in(client, "admin")
    page = client.get("/research/admin")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Uploads by research contributors: 1, of which 0 withdrawn." in html
    assert "No dataset version has been made yet." in html
    token = csrf_token_of(html)

    # Asked first: nothing is made on one click without the browser's dialog.
    asked = client.post("/research/admin/versions", data={"csrf_token": token, "licence": "research-only"})
    assert "Make the next dataset version under research-only?" in asked.get_data(as_text=True)
    assert db_session.scalar(select(DatasetVersion.id)) is None
    made = client.post("/research/admin/versions", data={"csrf_token": token, "licence": "research-only",
                                                         "confirmed": "yes"}, follow_redirects=True)
    html = made.get_data(as_text=True)
    assert "Dataset version 1 made: 1 studies, 6 images." in html and "+1 / −0 studies" in html

    refused = client.post("/research/admin/agreements", data={"csrf_token": token, "organization_id": "999999",
                                                              "licence": "research-only", "reference": "DUA-1"},
                          follow_redirects=True)
    assert "no organization 999999" in refused.get_data(as_text=True)
    organization_id = demo.users["contributor"].organization_id
    added = client.post("/research/admin/agreements", data={"csrf_token": token, "organization_id": organization_id,
                                                            "licence": "research-only", "reference": "DUA-2026-030"},
                        follow_redirects=True)
    assert "Data-use agreement DUA-2026-030 recorded." in added.get_data(as_text=True)
    agreement = db_session.scalar(select(DataUseAgreement).where(DataUseAgreement.reference == "DUA-2026-030"))
    assert agreement is not None and agreement.revoked_at is None
    revoked = client.post(f"/research/admin/agreements/{agreement.id}/revoke",
                          data={"csrf_token": token, "confirmed": "yes"}, follow_redirects=True)
    assert "Data-use agreement DUA-2026-030 revoked." in revoked.get_data(as_text=True)
    db_session.refresh(agreement)
    assert agreement.revoked_at is not None

    chinese = client.get("/research/admin", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "数据集版本" in chinese and "Dataset versions" not in chinese

    for role in ("contributor", "clinician", "patient", "partner"):
        assert as_role(role).get("/research/admin").status_code == 403, role
