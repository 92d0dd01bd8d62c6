"""Rows for tests that start mid-workflow: a referral through to a preliminary AI report."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from ai_services.models import AnalysisJob, AnalysisStatus, DiagnosticReport, Finding, FindingSource
from hospital.clock import utcnow
from hospital.seed import DemoSeed
from imaging_orders.models import ImagingStudy, StudyStatus
from referrals.models import Referral, ReferralStatus


def make_referral(session: Session, demo: DemoSeed, status: ReferralStatus = ReferralStatus.ACTIVE) -> Referral:
    clinician = demo.users["clinician"]
    referral = Referral(
        patient_id=demo.patient.id, requester_id=clinician.practitioner_id, created_by_user_id=clinician.id,
        performer_organization_id=demo.imaging_centre.id, modality="CT", body_part="CHEST",
        procedure_description="CT chest", reason="cough", status=status,
    )
    session.add(referral)
    session.flush()
    if status is not ReferralStatus.ACTIVE:
        referral.accession_number = f"T{referral.id:09d}"
    return referral


def make_preliminary_report(
    session: Session, demo: DemoSeed, boxes: list[tuple[int, int, int, int]], confidence: float = 0.9
) -> DiagnosticReport:
    """A completed study of `demo.patient` with an AI report holding one finding per box."""
    referral = make_referral(session, demo, ReferralStatus.COMPLETED)
    study = ImagingStudy(
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{referral.id}", accession_number=referral.accession_number,
        referral_id=referral.id, patient_id=demo.patient.id, organization_id=demo.imaging_centre.id,
        status=StudyStatus.AVAILABLE, completed_at=utcnow() - timedelta(minutes=5),
    )
    session.add(study)
    session.flush()
    uids = [f"{study.study_instance_uid}.{i}" for i in range(10)]
    job = AnalysisJob(
        study_id=study.id, status=AnalysisStatus.COMPLETED, slices_done=10, slices_total=10,
        slice_sop_instance_uids=uids, pixel_spacing_mm=[0.8, 0.7],
    )
    session.add(job)
    session.flush()
    report = DiagnosticReport(study_id=study.id, patient_id=demo.patient.id, referral_id=referral.id,
                              analysis_job_id=job.id, conclusion="AI draft")
    session.add(report)
    session.flush()
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        session.add(Finding(
            report_id=report.id, patient_id=demo.patient.id, source=FindingSource.AI, sop_instance_uid=uids[n],
            slice_index=n, x0=x0, y0=y0, x1=x1, y1=y1, diameter_mm=float(max(x1 - x0, y1 - y0)), confidence=confidence,
        ))
    session.flush()
    return report
