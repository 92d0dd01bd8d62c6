"""Real stored phantom studies with an AI report, for tests of the DICOM outputs and retraining:
the slices go through `store_instance` (files on disk, rows indexed) like a modality's C-STOREs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from flask import Flask
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import AnalysisJob, AnalysisStatus, DiagnosticReport, Finding, FindingSource
from ai_services.service import active_model_version
from hospital.seed import DemoSeed
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from referrals.models import ReferralStatus
from synthetic.dicom_factory import ct_series_datasets
from tests.factories import make_referral


@dataclass
class StoredStudy:
    study_id: int
    report_id: int
    sop_instance_uids: list[str]
    study_instance_uid: str


def store_study_with_report(
    app: Flask, session: Session, demo: DemoSeed, volume_hu: np.ndarray, *, pixel_spacing_mm: float,
    ai_boxes: list[tuple[int, tuple[int, int, int, int], float]] = (),  # type: ignore[assignment]
) -> StoredStudy:
    """Store `volume_hu` as a CT study of the demo patient and give it a preliminary AI report with
    one AI finding per (slice_index, box, confidence)."""
    referral = make_referral(session, demo, ReferralStatus.COMPLETED)
    session.commit()
    datasets = ct_series_datasets(
        volume_hu, patient_id=demo.patient.mrn, patient_name="Test^Patient",
        accession_number=referral.accession_number or "", pixel_spacing_mm=pixel_spacing_mm, slice_thickness_mm=5.0,
        # Derived from the pixels, so the same volume is the same study in every run and order.
        study_instance_uid=generate_uid(PYDICOM_ROOT_UID, [hashlib.sha256(volume_hu.tobytes()).hexdigest()]),
    )
    results = [store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTCT") for ds in datasets]
    study = session.get(ImagingStudy, results[0].study_id)
    assert study is not None
    study.patient_id, study.referral_id = demo.patient.id, referral.id
    study.organization_id, study.status = demo.imaging_centre.id, StudyStatus.AVAILABLE
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    model = active_model_version(session)
    job = AnalysisJob(study_id=study.id, status=AnalysisStatus.COMPLETED, slices_done=len(uids), slices_total=len(uids),
                      slice_sop_instance_uids=uids, pixel_spacing_mm=[pixel_spacing_mm, pixel_spacing_mm],
                      model_version_id=model.id if model else None, series_instance_uid=str(datasets[0].SeriesInstanceUID))
    session.add(job)
    session.flush()
    report = DiagnosticReport(study_id=study.id, patient_id=demo.patient.id, referral_id=referral.id,
                              analysis_job_id=job.id, conclusion="AI draft")
    session.add(report)
    session.flush()
    for slice_index, (x0, y0, x1, y1), confidence in ai_boxes:
        session.add(Finding(
            report_id=report.id, patient_id=demo.patient.id, source=FindingSource.AI,
            model_version_id=job.model_version_id, sop_instance_uid=uids[slice_index], slice_index=slice_index,
            x0=x0, y0=y0, x1=x1, y1=y1, diameter_mm=round(max(x1 - x0, y1 - y0) * pixel_spacing_mm, 1),
            confidence=confidence,
        ))
    session.commit()
    return StoredStudy(study.id, report.id, uids, study.study_instance_uid)


def output_instances(session: Session, study_id: int, source_modality: str = "CT") -> dict[int, list[ImagingInstance]]:
    """The study's derived instances (the AI's outputs) by series number."""
    rows = session.scalars(
        select(ImagingInstance).join(ImagingSeries)
        .where(ImagingSeries.study_id == study_id, ImagingSeries.modality != source_modality)
    ).all()
    by_series: dict[int, list[ImagingInstance]] = {}
    for row in rows:
        by_series.setdefault(row.series.number or 0, []).append(row)
    return by_series
