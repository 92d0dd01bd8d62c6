"""The signed report on paper: the PDF a patient keeps and a clinician prints, in either language.

Only a signed report (final or amended) has a PDF: a draft is the machine's and a radiologist's
work in progress, and paper outlives corrections. The PDF holds what the signature vouches for:
the centre, the patient (name in its script's order, birth date, MRN), the examination and the
clinician's question, each kept finding with its key slice (the finding boxed on it, as the report
page draws it), the impression and any addenda, who signed and when, and the AI model version with
its intended use, since a reader of an AI-assisted result must be able to tell which model helped.

`ReportDocument` is the same report seen as a document (FHIR DocumentReference): a read-only
mapping of the signed rows of the report table, so the FHIR layer reads and searches it like any
other record and a draft has no document to find. Its FHIR versions are taken when it is read (the
version tracker follows rows that are written, and this one never is): the content always
reflects the report as it is now, `meta.versionId` does not count the report's amendments.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from flask import current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.orm import Mapped, Session, relationship

from ai_services.models import AnalysisStatus, DiagnosticReport, Finding, FindingSource, ReportStatus, ReviewStatus
from ai_services.overlay import OverlayBox, render_overlay
from ai_services.reading import reading_context
from ai_services.service import findings_by_model, get_report, probability_percent
from hospital import i18n
from hospital.db import Base
from hospital.errors import Conflict
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Organization, User
from hospital.pdf import PdfFile, document_language, render_pdf
from imaging_orders.archive.public import instance_paths, study_ref

logger = logging.getLogger(__name__)

SIGNED_STATUSES = (ReportStatus.FINAL, ReportStatus.AMENDED)
# Where a report's PDF is served (ai_services.report_pdf_routes); FHIR links to it.
REPORT_PDF_PATH = "/reports/<int:report_id>/report.pdf"
# The languages a report's PDF is offered in, as catalog names.
PDF_LANGUAGES = tuple(i18n.SUPPORTED_LOCALES)
KEY_IMAGE_WINDOW = "lung"

# What a patient reads for the modality code an order carries (medical abbreviations spelled out).
MODALITY_NAMES = {
    "CT": _l("Computed tomography (CT)"),
    "MR": _l("Magnetic resonance imaging (MRI)"),
    "DX": _l("X-ray (digital radiography)"),
    "CR": _l("X-ray (computed radiography)"),
    "US": _l("Ultrasound"),
    "MG": _l("Mammography"),
    "PT": _l("Positron emission tomography (PET)"),
    "NM": _l("Nuclear medicine"),
}
SEX_WORDS = {"male": _l("Male"), "female": _l("Female"), "other": _l("Other"), "unknown": _l("Unknown")}


_signed_reports = (
    select(DiagnosticReport.__table__).where(DiagnosticReport.__table__.c.status.in_(SIGNED_STATUSES))
    .subquery("signed_report")
)


class ReportDocument(Base):
    """A signed report as a document (FHIR DocumentReference, same id as the report): read-only,
    mapped over the signed rows of `diagnostic_report`. It is never written; the report is."""

    __table__ = _signed_reports
    __mapper_args__ = {"primary_key": [_signed_reports.c.id]}

    # The columns it reads (typed for the reader; the mapping comes from the table above).
    id: Mapped[int]
    study_id: Mapped[int]
    patient_id: Mapped[int]
    status: Mapped[ReportStatus]
    signed_by_user_id: Mapped[int | None]
    signed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]

    signed_by: Mapped[User | None] = relationship(
        User, primaryjoin=lambda: User.id == _signed_reports.c.signed_by_user_id, foreign_keys=lambda: [
            _signed_reports.c.signed_by_user_id], viewonly=True,
    )


@dataclass(frozen=True)
class PdfFinding:
    """One kept finding as the PDF prints it, with its key slice as a `data:` PNG (None when the
    slice is not stored here, and for a classification: its box is only the field the model saw).
    `kind` as `Finding.kind`: an area by its size, a segmentation by its volume, a classification by
    its label and probability."""

    number: int
    slice_number: int
    diameter_mm: float
    confidence: float | None
    origin: str
    key_image: str | None
    kind: str = "area"
    label: str | None = None
    volume_mm3: float | None = None


@dataclass(frozen=True)
class PdfModelGroup:
    """The kept findings of one model: the built-in model's and the radiologist's (`model` None),
    or one partner model's with its name and version, partner and intended use."""

    model: str | None
    partner: str | None
    intended_use: str | None
    findings: tuple[PdfFinding, ...]


def signed_report_pdf(session: Session, user: User, report_id: int, storage_dir: Path) -> PdfFile:
    """The report's PDF in the current locale, if `user` may read the report (the report page's
    own access check and audit, `get_report`)."""
    report = get_report(session, user, report_id)
    return render_signed_report(session, report, storage_dir)


def render_signed_report(session: Session, report: DiagnosticReport, storage_dir: Path) -> PdfFile:
    """The PDF of a report the caller has already authorised (a download, or a job mailing it under
    `i18n.for_user`), in the current locale, with times on the patient's own clock."""
    if report.status not in SIGNED_STATUSES:
        raise Conflict(_("Report %(id)s is not signed yet: its PDF exists once a radiologist signs it.", id=report.id))
    patient = report.patient
    zone = patient.timezone
    study = study_ref(session, report.study_id)
    centre = session.get(Organization, study.organization_id) if study and study.organization_id else None
    context = reading_context(session, report)
    job = report.analysis_job
    model_version = job.model_version if job is not None else None
    modality = context.referral.modality if context.referral else None
    content = render_pdf(
        "ai_services/report_pdf.html",
        report=report, patient=patient, study=study, centre=centre, zone=zone,
        examination=context.examination, clinical_question=context.clinical_question,
        modality=str(MODALITY_NAMES[modality]) if modality in MODALITY_NAMES else modality,
        sex=str(SEX_WORDS.get(patient.gender, SEX_WORDS["unknown"])),
        groups=_pdf_findings(session, report, storage_dir), percent=probability_percent,
        signer=signer_name(report.signed_by), model_version=model_version,
        model_card=model_version.card if model_version is not None else None,
        not_applicable=job is not None and job.status is AnalysisStatus.NOT_APPLICABLE,
        local_datetime=i18n.local_datetime, local_date=i18n.local_date,
    )
    return PdfFile(content, report_pdf_filename(report, document_language()), document_language())


def report_pdf_filename(report: DiagnosticReport, language: str) -> str:
    signed = report.signed_at.date().isoformat() if report.signed_at else "unsigned"
    return f"imaging-report-{report.id}-{signed}-{language}.pdf"


def signer_name(user: User | None) -> str:
    """The signing radiologist as a reader knows them: their name, else their account name."""
    if user is None:
        return "—"
    return user.practitioner.display_name if user.practitioner is not None else user.username


def _pdf_findings(session: Session, report: DiagnosticReport, storage_dir: Path) -> list[PdfModelGroup]:
    """The kept findings grouped by the model that made them, numbered through in that order."""
    groups = findings_by_model([f for f in report.findings if f.review_status is not ReviewStatus.REJECTED])
    kept = [f for group in groups for f in group.findings]
    paths = instance_paths(session, [f.sop_instance_uid for f in kept if f.kind != "classification"], storage_dir)
    numbers = {f.id: n for n, f in enumerate(kept, start=1)}
    printed = []
    for group in groups:
        found = []
        for finding in group.findings:
            path = paths.get(finding.sop_instance_uid) if finding.kind != "classification" else None
            found.append(PdfFinding(
                number=numbers[finding.id], slice_number=finding.slice_index + 1, diameter_mm=finding.diameter_mm,
                confidence=finding.confidence, origin=_origin(finding),
                key_image=_key_image(path, finding, kept, numbers) if path is not None else None,
                kind=finding.kind, label=finding.label, volume_mm3=finding.volume_mm3,
            ))
        package = group.package
        printed.append(PdfModelGroup(
            model=package.label if package else None,
            partner=package.partner_organization.name if package else None,
            intended_use=package.intended_use if package else None, findings=tuple(found),
        ))
    return printed


def _origin(finding: Finding) -> str:
    if finding.source is FindingSource.RADIOLOGIST:
        return _("Added by the radiologist")
    if finding.review_status is ReviewStatus.EDITED:
        return _("Found by the AI, outline corrected by the radiologist")
    return _("Found by the AI, confirmed by the radiologist")


def _key_image(path: Path, finding: Finding, kept: Sequence[Finding], numbers: dict[int, int]) -> str | None:
    """The key slice with this finding boxed in red and the others on the same slice in yellow (not
    a classification's box: it is only the field its model saw)."""
    boxes = [
        OverlayBox(f.x0, f.y0, f.x1, f.y1, f"{numbers[f.id]}", "#ff3333" if f.id == finding.id else "#ffcc00")
        for f in kept if f.slice_index == finding.slice_index and f.kind != "classification"
    ]
    try:
        png = render_overlay(path, boxes, KEY_IMAGE_WINDOW)
    except (OSError, ValueError, AttributeError) as exc:
        # An unreadable slice leaves its finding without a picture; the signed text still prints.
        logger.warning("key image of finding %s not rendered from %s: %s", finding.id, path, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- the PDF in FHIR -------------------------------------------------------------------------------

LANGUAGE_NAMES = {"en": "English", "zh_CN": "Simplified Chinese"}


def report_pdf_url(report_id: int, locale_name: str) -> str:
    """The PDF's address in `locale_name`, absolute under PUBLIC_BASE_URL when an app is there."""
    base = current_app.config["PUBLIC_BASE_URL"] if has_app_context() else ""
    return f"{base}{REPORT_PDF_PATH.replace('<int:report_id>', str(report_id))}?lang={locale_name}"


def last_changed(signed_at: datetime | None, addenda_times: Sequence[datetime]) -> datetime | None:
    """When the document's content last changed: its signature, or its latest addendum."""
    times = [t for t in (signed_at, *addenda_times) if t is not None]
    return max(times) if times else None


def report_pdf_attachments(report_id: int, created: datetime | date | None) -> list[dict[str, object]]:
    """FHIR Attachments of a signed report's PDF, one per language (machine-facing titles stay in
    English; `language` says what the PDF is written in)."""
    return [
        {
            "contentType": "application/pdf",
            "language": locale_name.replace("_", "-"),
            "url": report_pdf_url(report_id, locale_name),
            "title": f"Imaging report {report_id} (PDF, {LANGUAGE_NAMES.get(locale_name, locale_name)})",
            "creation": created.isoformat() if created is not None else None,
        }
        for locale_name in PDF_LANGUAGES
    ]
