"""An accessibility audit of every role's pages with axe-core (WCAG 2.1 A and AA rules: labels,
names, contrast, landmarks, ARIA), at desktop and at phone width, in headless Chromium.

The pages are audited with content in them (a booked examination, a report with key images, a
consultation with messages), not only in their empty states. Every page a role's navigation
offers is visited, so a page added to the navigation later is audited without touching this file.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from sqlalchemy import select

from ai_services.models import DiagnosticReport, ReportStatus, ReviewStatus
from ai_services.package_service import submit_package
from followup.models import CarePlan
from followup.service import open_consultation
from hospital.db import get_db
from hospital.models import Role, User
from research.service import add_data_use_agreement, create_dataset_version
from research.storage import dicom_dir, research_dir, research_secret
from research.uploads import UploadedFile, contribute_upload
from tests.ai_services.package_factory import make_classifier_package
from tests.browser.conftest import (
    LiveSite,
    accepted_referral,
    booked_appointment,
    has_horizontal_scroll,
    login,
    make_report_with_key_images,
)
from tests.research.test_contributor_uploads import study_files

pytestmark = pytest.mark.browser

WCAG_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
           "resultTypes": ["violations"]}
WIDTHS = {"desktop": 1280, "phone": 375}


def audit(axe: Axe, page: Any, where: str) -> list[str]:
    results = axe.run(page, options=WCAG_AA)
    problems = []
    for violation in results.response["violations"]:
        targets = "; ".join(" ".join(node["target"]) for node in violation["nodes"][:3])
        problems.append(f"{where}: {violation['id']} ({violation['impact']}) {violation['help']} at {targets}")
    return problems


def populate(site: LiveSite) -> dict[str, list[str]]:
    """Content on the pages, and the pages reached from a list rather than the navigation."""
    appointment = booked_appointment(site, accepted_referral(site, "Persistent cough", "urgent"))
    review_id = make_report_with_key_images(site)
    signed_id = make_report_with_key_images(site)
    with site.app.app_context(), get_db(site.app).transaction() as session:
        report = session.get(DiagnosticReport, signed_id)
        assert report is not None
        for finding in report.findings:
            finding.review_status = ReviewStatus.ACCEPTED
        report.status = ReportStatus.FINAL
        # Older than the report under review: the reading workspace shows it as the prior beside it.
        report.issued_at = report.issued_at - timedelta(days=100)
        consultation = open_consultation(session, signed_id)
        assert consultation is not None
        consultation_id = consultation.id
        signed_referral = f"/referrals/{report.referral_id}"
        # The follow-up plan the consultation opened, and a task's cancel confirmation.
        plan = session.scalars(select(CarePlan).where(CarePlan.consultation_id == consultation_id)).one()
        plan_page, cancel_task_page = f"/care-plans/{plan.id}", f"/care-plans/tasks/{plan.tasks[0].id}/cancel"
    booked_referral = f"/referrals/{appointment['referral_id']}"
    # A prescription in the pharmacy's queue: its confirmation and return pages are audited too.
    prescription = site.api("POST", f"/api/consultations/{consultation_id}/prescriptions", site.token("clinician"), {
        "medication_code": "J01CA04", "dosage_text": "One capsule three times daily", "quantity": 2,
        "pharmacy_organization_id": site.demo.pharmacy.id})
    # A radiologist's emergency access: the admin review page lists it, their page shows it open.
    site.api("POST", "/api/emergency-access", token=site.token("radiologist"),
             body={"patient_id": site.demo.patient.id, "reason": "collapsed in the waiting room, prior imaging needed"})
    # A partner's model package: its list and its page, for the partner and the administrator.
    with site.app.app_context(), get_db(site.app).transaction() as session, tempfile.TemporaryDirectory() as work:
        partner = session.get(User, site.demo.users["partner"].id)
        assert partner is not None
        package = submit_package(session, make_classifier_package(Path(work)), partner,
                                 Path(site.app.config["AI_MODELS_DIR"]))
        package_page = f"/model-packages/{package.id}"
    # A research contributor's upload, and a dataset version holding it, on their pages.
    with site.app.app_context(), get_db(site.app).transaction() as session:
        contributor = session.get(User, site.demo.users["contributor"].id)
        assert contributor is not None
        contribute_upload(session, contributor, [UploadedFile(n, d) for n, d in study_files()], None,
                          consent_reference="CONSENT-7", research_dir=research_dir(site.app),
                          secret=research_secret(site.app))
        add_data_use_agreement(session, contributor.organization_id or 0, "research-only", "DUA-7")
        create_dataset_version(session, licence="research-only", created_by="admin", dicom_dir=dicom_dir(site.app),
                               research_dir=research_dir(site.app), secret=research_secret(site.app))
    return {
        "partner": ["/model-packages", package_page, "/partner-statements?month=2026-13"],
        "contributor": [],
        "clinician": [f"/consultations/{consultation_id}", f"/reports/{signed_id}", "/login", booked_referral,
                      signed_referral, plan_page, cancel_task_page],
        "patient": [f"/consultations/{consultation_id}", f"/reports/{signed_id}", booked_referral, signed_referral,
                    plan_page],
        "radiologist": [f"/reports/{review_id}", f"/reports/{review_id}?prior={signed_id}", f"/reports/{signed_id}"],
        "imaging_staff": [f"/worklist?date={appointment['start'][:10]}"],
        "admin": [f"/worklist?date={appointment['start'][:10]}", "/no/such/page", package_page,
                  f"/admin/centres/{site.demo.imaging_centre.id}", "/admin/users/new",
                  "/admin/users/new?role=patient&step=find_patient&patient_query=a", "/admin/users/new?role=clinician",
                  "/admin/revenue?from=2020-01-01&to=2099-12-31", "/admin/revenue?from=2030-02-10&to=2030-02-01",
                  f"/admin/users/{site.demo.users['clinician'].id}", "/admin/storage?preview=1", "/research/admin"],
        "pharmacist": [f"/dispense/{prescription['id']}?quantity=1", f"/dispense/{prescription['id']}/return"],
    }


def test_every_page_of_every_role_passes_the_wcag_aa_audit(browser: Any, site: LiveSite) -> None:
    extra = populate(site)
    axe = Axe()
    problems: list[str] = []
    audited = 0
    for role in Role:
        page = login(browser, site, role.value)
        links = page.get_by_role("navigation", name="Main").get_by_role("link")
        paths = ["/"] + [str(href) for href in links.evaluate_all("els => els.map(e => e.getAttribute('href'))")]
        for path in dict.fromkeys(paths + extra[role.value]):
            page.goto(path)
            for width_name, width in WIDTHS.items():
                page.set_viewport_size({"width": width, "height": 900})
                problems += audit(axe, page, f"{role.value} {path} ({width_name})")
                if width_name == "phone" and has_horizontal_scroll(page):
                    problems.append(f"{role.value} {path}: scrolls sideways at phone width")
                audited += 1
        page.context.close()
    assert audited >= 40, f"only {audited} page views were audited"
    assert not problems, "\n".join(problems)
