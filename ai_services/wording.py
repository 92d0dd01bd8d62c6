"""The words the AI stage's pages use for its codes: clinical priorities, viewer windows, review
decisions, model and package states, and how sure the model is of a finding.

Codes stay codes in the database, the API and FHIR (integrators read them); a person reads these
words, in their own language. Lazy strings: the dictionaries are built at import time and each
word is translated when a page is drawn, in its reader's language.
"""

from __future__ import annotations

import logging

from flask_babel import LazyString

from ai_services.models import (
    AnalysisStatus,
    DiagnosticReport,
    FindingSource,
    ModelPackage,
    ModelStatus,
    PackageStatus,
    ReportStatus,
    ReviewStatus,
)
from ai_services.service import findings_by_model, probability_percent
from hospital.i18n import format_number, gettext, lazy_gettext, ngettext, user_display_name
from referrals.public import Priority

logger = logging.getLogger(__name__)

# The order's priority (FHIR ServiceRequest.priority). Radiologists read the FHIR words themselves
# ("stat", "asap"), so English keeps them; other languages say what they mean.
PRIORITY_WORDS: dict[str, LazyString] = {
    # Translators: the order's priority, most pressing: do it now.
    Priority.STAT.value: lazy_gettext("stat"),
    # Translators: the order's priority: as soon as possible.
    Priority.ASAP.value: lazy_gettext("asap"),
    # Translators: the order's priority.
    Priority.URGENT.value: lazy_gettext("urgent"),
    # Translators: the order's priority: no hurry.
    Priority.ROUTINE.value: lazy_gettext("routine"),
}

# The viewer's window presets (which range of tissue densities the grey scale spans).
WINDOW_WORDS: dict[str, LazyString] = {
    "lung": lazy_gettext("lung"),
    "soft_tissue": lazy_gettext("soft tissue"),
    "bone": lazy_gettext("bone"),
}

# The radiologist's decision on one finding.
DECISION_WORDS: dict[str, LazyString] = {
    ReviewStatus.PENDING.value: lazy_gettext("not decided yet"),
    ReviewStatus.ACCEPTED.value: lazy_gettext("accepted"),
    ReviewStatus.REJECTED.value: lazy_gettext("rejected"),
    ReviewStatus.EDITED.value: lazy_gettext("edited"),
}

# A report's state in the list of reports (short: a column of badges).
REPORT_STATUS_WORDS: dict[str, LazyString] = {
    ReportStatus.PRELIMINARY.value: lazy_gettext("draft"),
    ReportStatus.FINAL.value: lazy_gettext("signed"),
    ReportStatus.AMENDED.value: lazy_gettext("amended"),
}

MODEL_STATUS_WORDS: dict[str, LazyString] = {
    ModelStatus.CANDIDATE.value: lazy_gettext("candidate"),
    ModelStatus.ACTIVE.value: lazy_gettext("active"),
    ModelStatus.RETIRED.value: lazy_gettext("retired"),
    ModelStatus.REJECTED.value: lazy_gettext("rejected"),
}

PACKAGE_STATUS_WORDS: dict[str, LazyString] = {
    PackageStatus.SUBMITTED.value: lazy_gettext("submitted"),
    PackageStatus.CHECKS_FAILED.value: lazy_gettext("checks failed"),
    PackageStatus.AWAITING_APPROVAL.value: lazy_gettext("awaiting approval"),
    PackageStatus.APPROVED.value: lazy_gettext("approved"),
    PackageStatus.REJECTED.value: lazy_gettext("rejected"),
    PackageStatus.RETIRED.value: lazy_gettext("retired"),
}

# A partner model's run on a study, on the report page.
PACKAGE_RUN_WORDS: dict[str, LazyString] = {
    AnalysisStatus.QUEUED.value: lazy_gettext("waiting to run"),
    AnalysisStatus.RUNNING.value: lazy_gettext("running"),
    AnalysisStatus.COMPLETED.value: lazy_gettext("completed"),
    AnalysisStatus.FAILED.value: lazy_gettext("failed"),
}

# The figures the drift of a model version at a centre is tested on (`ai_services.drift`).
DRIFT_FIGURE_WORDS: dict[str, LazyString] = {
    "acceptance rate": lazy_gettext("acceptance rate"),
    "added misses per study": lazy_gettext("added misses per study"),
    "AI findings per scan": lazy_gettext("AI findings per scan"),
}

# A model's confidence is a score, not the chance of disease: the page says so, and gives a word
# beside the percentage so that 0.62 is not read as "62% likely to be cancer".
HIGH_CONFIDENCE = 0.8
MODERATE_CONFIDENCE = 0.5
CONFIDENCE_EXPLANATION = lazy_gettext(
    "How sure the AI model is that this is a real finding, from 0 to 100%. It is not the chance of "
    "disease: the radiologist decides what the finding is.")


def word_for(words: dict[str, LazyString], code: object) -> str:
    """The word for `code` (an enum or its value) from one of the tables above; an unknown code is
    shown as itself, readable, rather than failing the page."""
    value = str(getattr(code, "value", code))
    word = words.get(value)
    return str(word) if word is not None else value.replace("_", " ")


def confidence_words(confidence: float) -> str:
    """"high (92%)": the model's confidence as a word and a percentage."""
    percent = round(confidence * 100)
    if confidence >= HIGH_CONFIDENCE:
        return gettext("high (%(percent)s%%)", percent=percent)
    if confidence >= MODERATE_CONFIDENCE:
        return gettext("moderate (%(percent)s%%)", percent=percent)
    return gettext("low (%(percent)s%%)", percent=percent)


def model_credit(package: ModelPackage) -> str:
    """"lung-nodules 2.1 from Acme Imaging": a partner model as a reader is told of it."""
    return gettext("%(model)s from %(partner)s", model=package.label, partner=package.partner_organization.name)


def draft_conclusion(report: DiagnosticReport) -> str:
    """The conclusion of an unsigned report in the reader's language. A draft's stored conclusion is
    the machine's summary, written by the analysis job in no one's language (FHIR and the SR carry
    that); the page says the same from the same findings. A signed conclusion is the radiologist's
    text and is shown as signed, never reworded."""
    if report.status is not ReportStatus.PRELIMINARY:
        return report.conclusion or ""
    job = report.analysis_job
    if job is not None and job.status is AnalysisStatus.NOT_APPLICABLE:
        return gettext("AI not applicable: %(reason)s. No AI findings; awaiting the radiologist's reading.",
                       reason=job.not_applicable_reason or "")
    # The built-in model's draft; partner models' findings are listed under each model.
    found = [f for f in report.findings if f.source is FindingSource.AI and f.package_analysis_id is None]
    if job is not None and job.status is AnalysisStatus.FAILED and not found:
        return gettext("AI analysis failed: %(reason)s. No AI findings; awaiting the radiologist's reading.",
                       reason=job.error or "")
    if job is None or job.status is not AnalysisStatus.COMPLETED:
        return report.conclusion or ""
    if not found:
        return gettext("AI analysis: no suspected abnormality flagged. Awaiting radiologist review.")
    return ngettext(
        "AI analysis: %(num)d suspected abnormality flagged for review (largest %(size)s mm). Awaiting radiologist review.",
        "AI analysis: %(num)d suspected abnormalities flagged for review (largest %(size)s mm). Awaiting radiologist "
        "review.", len(found), size=format_number(max(f.diameter_mm for f in found), 0))


def template_words() -> dict[str, object]:
    """The stage's words for its templates (a blueprint context processor)."""
    return {
        "priority_word": lambda code: word_for(PRIORITY_WORDS, code),
        "window_word": lambda code: word_for(WINDOW_WORDS, code),
        "decision_word": lambda code: word_for(DECISION_WORDS, code),
        "report_status_word": lambda code: word_for(REPORT_STATUS_WORDS, code),
        "model_status_word": lambda code: word_for(MODEL_STATUS_WORDS, code),
        "package_status_word": lambda code: word_for(PACKAGE_STATUS_WORDS, code),
        "package_run_word": lambda code: word_for(PACKAGE_RUN_WORDS, code),
        "drift_figure_word": lambda code: word_for(DRIFT_FIGURE_WORDS, code),
        "confidence_words": confidence_words,
        "percent_words": probability_percent,
        "model_credit": model_credit,
        "findings_by_model": findings_by_model,
        "confidence_explanation": CONFIDENCE_EXPLANATION,
        "person_called": user_display_name,
        "draft_conclusion": draft_conclusion,
    }
