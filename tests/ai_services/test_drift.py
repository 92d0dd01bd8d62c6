"""Drift monitoring: per model version and centre, the radiologists' decisions on signed reports,
tested against the rest of the platform; on the model page and as Prometheus gauges."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy.orm import Session

from ai_services.drift import DRIFT_ALPHA, drift_report, proportion_test, rate_test
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    Finding,
    FindingSource,
    ReportStatus,
    ReviewStatus,
)
from ai_services.service import active_model_version
from hospital.models import Organization, OrganizationKind
from hospital.seed import DEMO_PASSWORD, DemoSeed
from imaging_orders.archive.models import ImagingStudy, StudyStatus

_uids = itertools.count()


def signed_studies(session: Session, demo: DemoSeed, centre: Organization, n: int, *, accepted_per_study: int,
                   rejected_per_study: int, added_every: int, confidence: float = 0.7,
                   status: ReportStatus = ReportStatus.FINAL) -> None:
    """`n` signed reports at `centre`, each with AI findings accepted / rejected as told and one
    radiologist-added finding on every `added_every`-th study."""
    model = active_model_version(session)
    assert model is not None
    for k in range(n):
        study = ImagingStudy(study_instance_uid=f"1.2.826.0.1.3680043.10.1.{next(_uids)}", patient_id=demo.patient.id,
                             organization_id=centre.id, status=StudyStatus.AVAILABLE)
        session.add(study)
        session.flush()
        job = AnalysisJob(study_id=study.id, status=AnalysisStatus.COMPLETED, model_version_id=model.id)
        session.add(job)
        session.flush()
        report = DiagnosticReport(study_id=study.id, patient_id=demo.patient.id, analysis_job_id=job.id, status=status)
        session.add(report)
        session.flush()
        decisions = [ReviewStatus.ACCEPTED] * accepted_per_study + [ReviewStatus.REJECTED] * rejected_per_study
        sources = [(FindingSource.AI, d, confidence) for d in decisions]
        if added_every and k % added_every == 0:
            sources.append((FindingSource.RADIOLOGIST, ReviewStatus.ACCEPTED, None))
        for source, decision, conf in sources:
            session.add(Finding(report_id=report.id, patient_id=demo.patient.id, source=source,
                                model_version_id=model.id if source is FindingSource.AI else None,
                                sop_instance_uid="1.2.3", slice_index=0, x0=1, y0=1, x1=5, y1=5, diameter_mm=6.0,
                                confidence=conf, review_status=decision))
    session.flush()


def three_centres(session: Session, demo: DemoSeed) -> tuple[Organization, Organization, Organization]:
    """Two centres where radiologists accept 4 of 5 AI findings, and a third where they accept 1 of 2."""
    north = Organization(name="North Imaging", kind=OrganizationKind.IMAGING_CENTRE)
    south = Organization(name="South Imaging", kind=OrganizationKind.IMAGING_CENTRE)
    session.add_all([north, south])
    session.flush()
    # 60 studies x 2 AI findings each: 36 x 2 + 24 x 1 = 96 of 120 accepted.
    for centre in (demo.imaging_centre, north):
        signed_studies(session, demo, centre, 36, accepted_per_study=2, rejected_per_study=0, added_every=4)
        signed_studies(session, demo, centre, 24, accepted_per_study=1, rejected_per_study=1, added_every=4)
    signed_studies(session, demo, south, 20, accepted_per_study=1, rejected_per_study=1, added_every=4,
                   confidence=0.95)
    # Not signed yet: decisions can still change, so they do not count.
    signed_studies(session, demo, south, 10, accepted_per_study=0, rejected_per_study=2, added_every=1,
                   status=ReportStatus.PRELIMINARY)
    session.commit()
    return demo.imaging_centre, north, south


def test_a_centre_that_rejects_far_more_findings_is_flagged_and_the_others_are_not(
    db_session: Session, demo: DemoSeed
) -> None:
    demo_centre, north, south = three_centres(db_session, demo)

    [version] = drift_report(db_session)
    by_name = {c.centre_name: c for c in version.centres}
    assert version.platform.studies == 140 and version.platform.ai_findings == 280
    assert version.platform.added == 35
    drifting = by_name[south.name]
    assert drifting.figures.studies == 20 and drifting.figures.acceptance_rate == 0.5
    assert drifting.figures.confidence_histogram[9] == 40 and sum(drifting.figures.confidence_histogram) == 40
    assert drifting.reference.studies == 120 and drifting.reference.acceptance_rate == 0.8
    assert drifting.drifting
    assert drifting.reason.startswith("acceptance rate 0.50 vs 0.80 on the rest of the platform (z -4.")
    acceptance = drifting.tests[0]
    assert acceptance.p_value is not None and acceptance.p_value < DRIFT_ALPHA
    for centre in (demo_centre, north):
        steady = by_name[centre.name]
        assert steady.figures.acceptance_rate == 0.8 and steady.figures.added_per_study == 0.25
        assert steady.figures.findings_per_scan == 2.0 and steady.figures.confidence_histogram[7] == 120
        assert not steady.drifting, steady.reason
        assert all(t.p_value is not None and t.p_value > DRIFT_ALPHA for t in steady.tests)


def test_too_few_decisions_are_not_tested() -> None:
    test = proportion_test("acceptance rate", 1, 10, 80, 100)
    assert test.p_value is None and not test.flagged
    assert test.describe() == "acceptance rate: too few data to test"
    assert rate_test("added misses per study", 9, 9, 1, 100).p_value is None
    # A clear departure with enough data on both sides is flagged.
    assert rate_test("added misses per study", 30, 20, 10, 100).flagged


def _admin(client: Any) -> None:
    token = client.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "admin", "password": DEMO_PASSWORD, "csrf_token": token})


def test_model_page_and_metrics_show_drift_per_centre(client: Any, db_session: Session, demo: DemoSeed) -> None:
    _, north, south = three_centres(db_session, demo)
    _admin(client)

    html = client.get("/models").get_data(as_text=True)
    assert "Drift by centre" in html
    south_row = html.split(f'<td data-label="Centre">{south.name}</td>')[1].split("</tr>")[0]
    assert "0.50 (20/40)" in south_row and "drifting" in south_row and "acceptance rate 0.50 vs 0.80" in south_row
    north_row = html.split(f'<td data-label="Centre">{north.name}</td>')[1].split("</tr>")[0]
    assert "0.80 (96/120)" in north_row and "no drift" in north_row

    metrics = client.get("/metrics").get_data(as_text=True)
    model = active_model_version(db_session)
    assert model is not None
    labels = f'centre="{south.name}",model="{model.name}",version="{model.version}"'
    assert f"hospital_ai_drift_flag{{{labels}}} 1.0" in metrics
    assert f"hospital_ai_drift_acceptance_rate{{{labels}}} 0.5" in metrics
    assert f'hospital_ai_drift_confidence_findings{{bin="0.9",{labels}}} 40.0' in metrics
    north_labels = f'centre="{north.name}",model="{model.name}",version="{model.version}"'
    assert f"hospital_ai_drift_flag{{{north_labels}}} 0.0" in metrics
    assert f"hospital_ai_drift_added_per_study{{{north_labels}}} 0.25" in metrics


def test_an_alert_fires_on_the_drift_flag() -> None:
    import yaml

    from tests.hospital.test_observability import ALERTS
    rules = {rule["alert"]: rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert rules["HospitalAiCentreDrift"]["expr"].strip() == "hospital_ai_drift_flag == 1"
