"""Events the AI stage publishes (see hospital.events)."""

from __future__ import annotations

from dataclasses import dataclass

from hospital.events import DomainEvent


@dataclass(frozen=True)
class AnalysisCompleted(DomainEvent):
    """The model read a study: a preliminary report with its findings exists."""

    name = "ai.analysis_completed"

    report_id: int
    study_id: int
    patient_id: int
    organization_id: int | None
    issued_at: str | None
    # The package the model version came in by (ai_services.detector_package), for billing to
    # charge the analysis at its own price like any package's; None: the catalog's AI price.
    package_id: int | None = None
    package_name: str | None = None
    package_version: str | None = None
    partner_organization_id: int | None = None
    price_minor: int | None = None
    currency: str | None = None
    partner_share_bp: int | None = None


@dataclass(frozen=True)
class AnalysisFailed(DomainEvent):
    """The built-in model failed on a study that had no report yet (an error, not a refusal): a
    preliminary report exists that says so, with no AI findings, so the study reaches the
    radiologist's reading list and the partner models routed to it still read it. Nothing is billed
    as an AI analysis; a re-run that succeeds publishes `AnalysisCompleted` into the same report."""

    name = "ai.analysis_failed"

    report_id: int
    study_id: int
    patient_id: int
    organization_id: int | None
    reason: str


@dataclass(frozen=True)
class AnalysisNotApplicable(DomainEvent):
    """The built-in model did not read a study outside its intended use (an MR, an NM study...): a
    preliminary report exists that says why, with no AI findings. Not `AnalysisCompleted`: no AI
    analysis is billed and no AI SR is made, but the partner models routed to the study still read
    it into that report (and once one has, the SR holds its findings: `PackageAnalysisCompleted`)."""

    name = "ai.analysis_not_applicable"

    report_id: int
    study_id: int
    patient_id: int
    organization_id: int | None
    reason: str


@dataclass(frozen=True)
class ReportSigned(DomainEvent):
    """A radiologist signed the report: it is final and care may follow."""

    name = "ai.report_signed"

    report_id: int
    patient_id: int
    referral_id: int | None


@dataclass(frozen=True)
class ReportAmended(DomainEvent):
    """A radiologist added an addendum to a signed report: it is `amended`, the original stands.

    Not a second `ReportSigned`: the care and the charges that followed the signature are not
    owed again (no new consultation, no new charge); what follows is a new SR version and a word
    to the referring clinician."""

    name = "ai.report_amended"

    report_id: int
    addendum_id: int
    patient_id: int
    referral_id: int | None


@dataclass(frozen=True)
class PackageAnalysisCompleted(DomainEvent):
    """A partner model package read a study: its findings are in the report. Carries what billing
    needs to charge the analysis at the package's own price and credit its partner, so billing
    never reads this stage's tables."""

    name = "ai.package_analysis_completed"

    analysis_id: int
    report_id: int
    study_id: int
    patient_id: int
    organization_id: int | None  # the performing centre
    package_id: int
    package_name: str
    package_version: str
    partner_organization_id: int
    price_minor: int
    currency: str
    partner_share_bp: int
    completed_at: str | None
