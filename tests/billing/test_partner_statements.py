"""Partner model analyses are charged at each package's own price, once per analysis, with the
package and partner recorded; a partner statement per month splits revenue into the partner's and
the platform's shares; a partner reads only its own; revenue groups by model and partner."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.events import PackageAnalysisCompleted
from ai_services.models import ModelPackage
from ai_services.package_service import submit_package
from billing.models import ChargeItem
from billing.service import charge_package_analysis
from hospital.models import Organization, OrganizationKind, Role, User
from hospital.seed import DemoSeed, _user
from tests.ai_services.package_factory import make_classifier_package, make_map_package
from tests.factories import make_preliminary_report

WHEN = datetime(2026, 11, 14, 10, 0, tzinfo=UTC)


def analysis(package: ModelPackage, analysis_id: int, report_id: int, patient_id: int,
             when: datetime = WHEN) -> PackageAnalysisCompleted:
    return PackageAnalysisCompleted(
        analysis_id=analysis_id, report_id=report_id, study_id=1, patient_id=patient_id, organization_id=None,
        package_id=package.id, package_name=package.name, package_version=package.version,
        partner_organization_id=package.partner_organization_id, price_minor=package.price_minor,
        currency=package.currency, partner_share_bp=package.partner_share_bp, completed_at=when.isoformat(),
    )


def other_partner(session: Session) -> User:
    organization = Organization(name="Other Vision Ltd", kind=OrganizationKind.AI_PARTNER)
    session.add(organization)
    session.flush()
    return _user(session, "other-partner", Role.PARTNER, organization_id=organization.id)


def test_each_analysis_is_one_charge_at_its_package_price_and_the_statement_splits_it(
    app: Flask, as_role: Any, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    models_dir = Path(app.config["AI_MODELS_DIR"])
    classifier = submit_package(db_session, make_classifier_package(tmp_path / "c"), demo.users["partner"], models_dir)
    detector = submit_package(db_session, make_map_package(tmp_path / "d"), demo.users["partner"], models_dir)
    stranger = other_partner(db_session)
    theirs = submit_package(db_session, make_map_package(tmp_path / "o", name="other-detector",
                                                         partner_organization="Other Vision Ltd"), stranger, models_dir)
    report = make_preliminary_report(db_session, demo, [])
    patient = report.patient_id
    first = charge_package_analysis(db_session, analysis(classifier, 1, report.id, patient))
    assert charge_package_analysis(db_session, analysis(classifier, 1, report.id, patient)).id == first.id
    charge_package_analysis(db_session, analysis(classifier, 2, report.id, patient))
    charge_package_analysis(db_session, analysis(detector, 3, report.id, patient))
    charge_package_analysis(db_session, analysis(theirs, 4, report.id, patient))
    charge_package_analysis(db_session, analysis(detector, 5, report.id, patient, datetime(2026, 12, 2, tzinfo=UTC)))
    db_session.commit()

    charges = db_session.scalars(select(ChargeItem).where(ChargeItem.model_package_id.is_not(None))
                                 .order_by(ChargeItem.id)).all()
    assert [(c.model_label, c.total_minor, c.partner_share_bp) for c in charges] == [
        ("nodule-classifier 1.0.0", 1200, 7000), ("nodule-classifier 1.0.0", 1200, 7000),
        ("bright-detection 1.0.0", 3000, 6000), ("other-detector 1.0.0", 3000, 6000),
        ("bright-detection 1.0.0", 3000, 6000)]
    assert {c.partner_organization_id for c in charges[:3]} == {demo.users["partner"].organization_id}

    acme = demo.users["partner"].organization_id
    partner = as_role("partner")
    statement = partner.get(f"/api/partner-statements/{acme}?month=2026-11").get_json()
    lines = {line["model"]: line for line in statement["lines"]}
    assert set(lines) == {"nodule-classifier 1.0.0", "bright-detection 1.0.0"}
    assert (lines["nodule-classifier 1.0.0"]["analyses"], lines["nodule-classifier 1.0.0"]["revenue_minor"],
            lines["nodule-classifier 1.0.0"]["partner_share_minor"],
            lines["nodule-classifier 1.0.0"]["platform_share_minor"]) == (2, 2400, 1680, 720)
    assert (lines["bright-detection 1.0.0"]["analyses"], lines["bright-detection 1.0.0"]["partner_share_minor"]) == (1, 1800)
    assert statement["totals"] == [{"currency": "EUR", "analyses": 3, "revenue_minor": 5400,
                                    "partner_share_minor": 3480, "platform_share_minor": 1920}]
    exported = partner.get(f"/api/partner-statements/{acme}?month=2026-11&format=csv")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert {(r["model"], r["revenue"], r["partner_share"], r["platform_share"]) for r in rows} == {
        ("nodule-classifier 1.0.0", "24.00", "16.80", "7.20"), ("bright-detection 1.0.0", "30.00", "18.00", "12.00")}

    # A partner never sees another partner's statement; an administrator sees any.
    other = theirs.partner_organization_id
    assert partner.get(f"/api/partner-statements/{other}?month=2026-11").status_code == 404
    page = partner.get(f"/partner-statements?partner={other}&month=2026-11")
    assert page.status_code == 404 and "other-detector" not in page.get_data(as_text=True)
    admin = as_role("admin")
    assert admin.get(f"/api/partner-statements/{other}?month=2026-11").get_json()["lines"][0]["model"] == "other-detector 1.0.0"
    assert as_role("clinician").get(f"/api/partner-statements/{acme}?month=2026-11").status_code == 403
    assert partner.get(f"/api/partner-statements/{acme}?month=November").status_code == 400

    own_page = partner.get("/partner-statements?month=2026-11").get_data(as_text=True)
    assert "nodule-classifier 1.0.0" in own_page and "other-detector" not in own_page and "€16.80" in own_page
    admin_page = admin.get(f"/partner-statements?partner={acme}&month=2026-11").get_data(as_text=True)
    assert 'name="partner"' in admin_page and "Other Vision Ltd" in admin_page

    by_model = {line["group"]: line for line in admin.get("/api/revenue?group_by=model").get_json()}
    assert by_model["bright-detection 1.0.0"]["total_minor"] == 6000
    by_partner = {line["group"]: line for line in admin.get("/api/revenue?group_by=partner").get_json()}
    assert by_partner["Acme Imaging AI"]["total_minor"] == 8400 and by_partner["Other Vision Ltd"]["total_minor"] == 3000
    assert "By partner model" in admin.get("/admin/revenue").get_data(as_text=True)
