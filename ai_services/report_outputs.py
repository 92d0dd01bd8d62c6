"""The report's DICOM outputs stored back into its study: what of the report and its slices
`ai_services.dicom_outputs` needs (every finding with the model that made it, a partner
segmentation's region), read from the database and the archive, and the store of the SR, the key
images and the Segmentation as derived instances of the study, the previous version withdrawn.

Run by `ai_services.jobs.make_report_outputs` on the report's events (the built-in model's draft,
each partner model's findings, the signature, each addendum).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_services.dicom_outputs import (
    OutputFinding,
    OutputMask,
    OutputModel,
    OutputReport,
    build_report_outputs,
    output_series_uids,
    segmentation_series_uid,
)
from ai_services.models import AnalysisJob, AnalysisStatus, DiagnosticReport, Finding, PackageAnalysis, ReportStatus
from ai_services.service import DEFAULT_MODEL_NAME
from hospital.db import get_db
from hospital.dicom_text import dicom_person_name
from hospital.errors import InvalidInput
from hospital.models import Organization
from imaging_orders.archive.public import (
    StoreResult,
    instance_paths,
    store_instance,
    study_ref,
    withdraw_derived_instances,
)

logger = logging.getLogger(__name__)

OUTPUTS_CALLING_AE = "AI-OUTPUTS"


@dataclass(frozen=True)
class ReportOutputsRequest:
    """What `build_report_outputs` needs, read from the database and the stored slices."""

    report: OutputReport
    source_images: dict[str, pydicom.Dataset]
    series_uids: tuple[str, ...]  # the SR's, the key images' and the Segmentation's


def _output_model(analysis: PackageAnalysis) -> OutputModel:
    package = analysis.model_package
    return OutputModel(analysis_id=analysis.id, name=package.name, version=package.version,
                       partner=package.partner_organization.name)


def _output_mask(finding: Finding) -> OutputMask | None:
    """A partner segmentation's region, kept with its run (package_runs: `outputs["masks"]`)."""
    if finding.package_analysis is None:
        return None
    for kept in finding.package_analysis.outputs.get("masks") or ():
        if kept.get("finding_id") == finding.id:
            return OutputMask(rows=int(kept["rows"]), columns=int(kept["columns"]),
                              runs=tuple(int(v) for v in kept["runs"]))
    return None


def _output_finding(finding: Finding) -> OutputFinding:
    return OutputFinding(
        finding_id=finding.id, sop_instance_uid=finding.sop_instance_uid,
        box=(finding.x0, finding.y0, finding.x1, finding.y1), diameter_mm=float(finding.diameter_mm),
        confidence=finding.confidence, review_status=finding.review_status.value, source=finding.source.value,
        package=_output_model(finding.package_analysis) if finding.package_analysis is not None else None,
        kind=finding.kind, label=finding.label, volume_mm3=finding.volume_mm3, mask=_output_mask(finding),
    )


def report_outputs_request(session: Session, report_id: int, storage_dir: Path) -> ReportOutputsRequest | None:
    """Read a report, its findings (every model's, and the radiologist's) and their key slices.
    None when there is nothing to show yet."""
    report = session.get(DiagnosticReport, report_id)
    if report is None or report.analysis_job_id is None:
        logger.info("report %s is gone or has no analysis; no DICOM outputs", report_id)
        return None
    job = session.get(AnalysisJob, report.analysis_job_id)
    if job is None or not job.slice_sop_instance_uids:
        return None
    partner_runs = tuple(_output_model(a) for a in report.package_analyses if a.status is AnalysisStatus.COMPLETED)
    builtin_read = job.status is not AnalysisStatus.NOT_APPLICABLE
    if not builtin_read and not partner_runs:
        # An AI SR would claim a reading no model made; the report says why there is none. (A
        # partner model that read the study makes one: its findings, and only its.)
        logger.info("report %s: AI not applicable and no partner model read the study; no AI DICOM outputs",
                    report_id)
        return None
    findings = tuple(_output_finding(f) for f in report.findings)
    # A report with no finding still gets an SR ("nothing found"), attached to the first slice.
    wanted = list(dict.fromkeys(f.sop_instance_uid for f in findings)) or [job.slice_sop_instance_uids[0]]
    source_images: dict[str, pydicom.Dataset] = {
        uid: pydicom.dcmread(path) for uid, path in instance_paths(session, wanted, storage_dir).items()}
    missing = [uid for uid in wanted if uid not in source_images]
    if missing:
        raise InvalidInput(f"report {report_id}: key slices {missing[:3]} are not stored")
    signer = report.signed_by
    signer_name = None
    if signer is not None:
        practitioner = signer.practitioner
        signer_name = dicom_person_name(practitioner.family_name, practitioner.given_name) if practitioner else signer.username
    model_version = job.model_version
    study = study_ref(session, report.study_id)
    assert study is not None  # foreign key
    organization = session.get(Organization, study.organization_id) if study.organization_id else None
    request_report = OutputReport(
        report_id=report.id, status=report.status.value, findings=findings,
        model_name=model_version.name if model_version else DEFAULT_MODEL_NAME,
        model_version=model_version.version if model_version else "unknown",
        signed_by=signer_name if report.status is not ReportStatus.PRELIMINARY else None,
        signed_at=report.signed_at,
        organization=organization.name if organization else "Closed Loop Hospital",
        addenda=tuple(a.text for a in report.addenda),
        packages=partner_runs,
        builtin_read=builtin_read,
    )
    study_uid = study.study_instance_uid
    return ReportOutputsRequest(request_report, source_images,
                                (*output_series_uids(study_uid, report.id), segmentation_series_uid(study_uid, report.id)))


# The first key of the two-key advisory lock one report's outputs are made under (the second is
# the report's id); any fixed number not used by another two-key lock.
REPORT_OUTPUTS_LOCK = 1500


def store_report_outputs(app: Flask, report_id: int) -> list[StoreResult]:
    """Build the report's SR, key images and Segmentation and store them as instances of its study.

    Idempotent: the instance UIDs follow the report's content, so a rerun for the same state stores
    duplicates (nothing new), and a changed report replaces the previous outputs in the same three
    series (new instances are stored first, then the old ones are removed).

    One report's outputs are made one job at a time (an advisory lock held from the read to the
    removal of the old ones): several partner models finishing together queue one job each, and
    without it a job that read an older state could finish last and withdraw the newer outputs.
    """
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    db = get_db(app)
    with _embedded_lock(app, report_id), db.transaction() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(REPORT_OUTPUTS_LOCK, report_id)))
        request = report_outputs_request(session, report_id, storage_dir)
        if request is None:
            return []
        outputs = build_report_outputs(request.report, request.source_images)
        results = [
            store_instance(app, dataset, transfer_syntax_uid=None, calling_ae=OUTPUTS_CALLING_AE, derived=True)
            for dataset in outputs.datasets
        ]
        removed = withdraw_derived_instances(app, request.series_uids, keep={r.sop_instance_uid for r in results})
    logger.info("report %s: %d DICOM outputs stored (%d new), %d stale removed", report_id, len(results),
                sum(not r.duplicate for r in results), removed)
    return results


@contextmanager
def _embedded_lock(app: Flask, report_id: int) -> Iterator[None]:
    """The same one-at-a-time on the embedded SQLite database, which has no advisory locks: an
    exclusive lock on a file of the instance folder, which every process of an embedded
    installation shares (the web app, the DICOM node and their inline jobs; the signature's job and
    the draft's may run at once in two of them). Nothing on PostgreSQL."""
    if get_db(app).engine.dialect.name == "postgresql":
        yield
        return
    folder = Path(app.config["INSTANCE_DIR"]) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"report-outputs-{report_id}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
