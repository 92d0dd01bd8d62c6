"""Rows for tests that start mid-workflow: a referral through to a preliminary AI report."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy.orm import Session

from ai_services.events import AnalysisCompleted
from ai_services.models import AnalysisJob, AnalysisStatus, DiagnosticReport, Finding, FindingSource
from followup.events import ConsultationFinished
from followup.models import Consultation
from followup.service import opened_by_ai_finding
from hospital.clock import utcnow
from hospital.events import iso_instant
from hospital.models import Practitioner
from hospital.seed import DemoSeed
from imaging_orders.archive.events import StudyCompleted
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from referrals.models import Referral, ReferralStatus
from synthetic.dicom_factory import ct_series_datasets


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


def store_report_slices(
    session: Session, storage_dir: Path, report: DiagnosticReport, volume: np.ndarray, *,
    pixel_spacing_mm: float, slice_thickness_mm: float,
) -> None:
    """Write `volume` as the CT series the report's analysis announced (same SOP Instance UIDs, in
    slice order) under `storage_dir`, and index it, so key images and slices render."""
    job = session.get(AnalysisJob, report.analysis_job_id)
    assert job is not None and len(job.slice_sop_instance_uids) == volume.shape[0]
    study = session.get(ImagingStudy, report.study_id)
    assert study is not None
    datasets = ct_series_datasets(
        volume, patient_id=report.patient.mrn, patient_name=report.patient.dicom_name,
        accession_number=study.accession_number or "", study_instance_uid=study.study_instance_uid,
        pixel_spacing_mm=pixel_spacing_mm, slice_thickness_mm=slice_thickness_mm,
    )
    series = ImagingSeries(study_id=study.id, series_instance_uid=datasets[0].SeriesInstanceUID, number=1, modality="CT")
    session.add(series)
    session.flush()
    folder = storage_dir / "reports" / str(report.id)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (ds, uid) in enumerate(zip(datasets, job.slice_sop_instance_uids, strict=True)):
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"{index:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        data = path.read_bytes()
        session.add(ImagingInstance(
            series_id=series.id, sop_instance_uid=uid, sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), number=index + 1,
            path=str(path.relative_to(storage_dir)), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        ))
    session.flush()


# The events the stages would have published for these rows (billing and follow-up tests run their
# handlers directly, the way `hospital.jobs.run_job` delivers them).


def study_completed(session: Session, study_id: int) -> StudyCompleted:
    study = session.get(ImagingStudy, study_id)
    assert study is not None and study.referral_id is not None and study.patient_id is not None
    referral = session.get(Referral, study.referral_id)
    assert referral is not None
    return StudyCompleted(study_id=study.id, patient_id=study.patient_id, referral_id=referral.id,
                          organization_id=study.organization_id, modality=referral.modality,
                          completed_at=iso_instant(study.completed_at))


def analysis_completed(session: Session, report: DiagnosticReport) -> AnalysisCompleted:
    study = session.get(ImagingStudy, report.study_id)
    assert study is not None
    return AnalysisCompleted(report_id=report.id, study_id=report.study_id, patient_id=report.patient_id,
                             organization_id=study.organization_id, issued_at=iso_instant(report.issued_at))


def consultation_finished(session: Session, consultation: Consultation) -> ConsultationFinished:
    practitioner = session.get(Practitioner, consultation.practitioner_id)
    return ConsultationFinished(
        consultation_id=consultation.id, patient_id=consultation.patient_id,
        organization_id=practitioner.organization_id if practitioner else None,
        ended_at=iso_instant(consultation.ended_at), ai_attributed=opened_by_ai_finding(session, consultation))
