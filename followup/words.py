"""What followup's codes and stored words mean to the person reading them, in their language.

Prescriptions are written the way clinicians write them ("500 mg tds PO"). A patient reads the Latin
abbreviations spelled out ("500 mg three times a day by mouth", "500 mg 每日三次 口服"); staff read the
same words with the prescriber's own text beside them, since that is what was signed.

The system writes some words into rows itself: a plan's title, the reason a consultation was opened,
a task made from a template. Those rows keep the English the system wrote (a row has no reader;
a template task is the same task for a Chinese and an English reader), and are shown here in the
reader's language. Words a clinician typed are shown as typed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from followup.models import CarePlan, Consultation, FollowUpTask
from followup.service import URGENT_DIAMETER_MM
from hospital.i18n import gettext, lazy_gettext, ngettext

logger = logging.getLogger(__name__)

# Prescription shorthand (British and US usage), lower case, as words a patient understands.
# "on" (at night), "om", "top" and "am" are left out: they are also ordinary English words.
DOSAGE_ABBREVIATIONS: dict[str, Any] = {
    "od": lazy_gettext("once a day"),
    "qd": lazy_gettext("once a day"),
    "bd": lazy_gettext("twice a day"),
    "bid": lazy_gettext("twice a day"),
    "tds": lazy_gettext("three times a day"),
    "tid": lazy_gettext("three times a day"),
    "qds": lazy_gettext("four times a day"),
    "qid": lazy_gettext("four times a day"),
    "mane": lazy_gettext("in the morning"),
    "nocte": lazy_gettext("at night"),
    "qhs": lazy_gettext("at bedtime"),
    "prn": lazy_gettext("when needed"),
    "stat": lazy_gettext("straight away, once"),
    "ac": lazy_gettext("before meals"),
    "pc": lazy_gettext("after meals"),
    "po": lazy_gettext("by mouth"),
    "iv": lazy_gettext("into a vein"),
    "im": lazy_gettext("into a muscle"),
    "sc": lazy_gettext("under the skin"),
    "sl": lazy_gettext("under the tongue"),
    "pr": lazy_gettext("rectally"),
    "inh": lazy_gettext("inhaled"),
    "tab": lazy_gettext("tablet"),
    "tablet": lazy_gettext("tablet"),
    "tabs": lazy_gettext("tablets"),
    "tablets": lazy_gettext("tablets"),
    "cap": lazy_gettext("capsule"),
    "capsule": lazy_gettext("capsule"),
    "caps": lazy_gettext("capsules"),
    "capsules": lazy_gettext("capsules"),
}
_WORD = re.compile(r"[A-Za-z]+(?:\d+[A-Za-z]+)?")
_EVERY_HOURS = re.compile(r"q(\d{1,2})h")


def dosage_words(text: str) -> str:
    """`text` with its prescription shorthand spelled out in the reader's language; the rest (doses,
    units, words the prescriber wrote out) as written. "1 cap tds PO" -> "1 capsule three times a day
    by mouth" / "1 粒 每日三次 口服"."""

    def spell(match: re.Match[str]) -> str:
        word = match.group(0)
        known = DOSAGE_ABBREVIATIONS.get(word.lower())
        if known is not None:
            return str(known)
        every = _EVERY_HOURS.fullmatch(word.lower())
        if every:
            hours = int(every.group(1))
            return ngettext("every %(num)d hour", "every %(num)d hours", hours)
        return word

    return _WORD.sub(spell, text)


# Status codes as followup means them ----------------------------------------------------------------

CONSULTATION_STATUS = {
    "planned": lazy_gettext("Open"),
    "in-progress": lazy_gettext("In progress"),
    "finished": lazy_gettext("Finished"),
    "cancelled": lazy_gettext("Cancelled"),
}
TASK_STATUS = {
    "requested": lazy_gettext("To do"),
    "in-progress": lazy_gettext("Ordered"),
    "completed": lazy_gettext("Done"),
    "cancelled": lazy_gettext("Cancelled"),
}
MEDICATION_STATUS = {
    "active": lazy_gettext("Sent to the pharmacy"),
    "on-hold": lazy_gettext("Returned by the pharmacy"),
    "completed": lazy_gettext("Dispensed"),
    "cancelled": lazy_gettext("Cancelled"),
}
# Kinds a task written by hand may have (FHIR Task.code in TASK_KIND_SYSTEM).
TASK_KINDS: dict[str, Any] = {"repeat-scan": lazy_gettext("Repeat scan"), "visit": lazy_gettext("Visit"),
                              "lab-test": lazy_gettext("Lab test"), "other": lazy_gettext("Other")}
# Every kind a task may have: those, and the report review a consultation may carry.
TASK_KIND: dict[str, Any] = {**TASK_KINDS, "review-report": lazy_gettext("Review the report")}


PRIORITY = {
    "routine": lazy_gettext("Routine"),
    "urgent": lazy_gettext("Urgent"),
    "asap": lazy_gettext("As soon as possible"),
    "stat": lazy_gettext("Immediately"),
}


def _word(words: dict[str, Any], code: object) -> str:
    value = str(getattr(code, "value", code))
    found = words.get(value)
    return str(found) if found is not None else value.replace("-", " ")


def consultation_status(code: object) -> str:
    return _word(CONSULTATION_STATUS, code)


def task_status(code: object) -> str:
    return _word(TASK_STATUS, code)


def medication_status(code: object) -> str:
    return _word(MEDICATION_STATUS, code)


def task_kind(code: object) -> str:
    return _word(TASK_KIND, code)


def priority_word(code: object) -> str:
    return _word(PRIORITY, code)


# Words the system wrote into rows -------------------------------------------------------------------

# Every description a task template or the opening of a consultation writes (followup.planning,
# followup.plan_changes, followup.service), English -> the reader's words.
TASK_DESCRIPTIONS: dict[str, Any] = {
    "Repeat the scan to check the finding(s)": lazy_gettext("Repeat the scan to check the finding(s)"),
    "Blood tests before the review visit": lazy_gettext("Blood tests before the review visit"),
    "Review visit with the clinician": lazy_gettext("Review visit with the clinician"),
    "Repeat the scan in 3 months": lazy_gettext("Repeat the scan in 3 months"),
    "Repeat the scan in 6 months": lazy_gettext("Repeat the scan in 6 months"),
    "Clinic visit with your clinician": lazy_gettext("Clinic visit with your clinician"),
    "Blood test at the clinic's laboratory": lazy_gettext("Blood test at the clinic's laboratory"),
    "Virtual consultation with the referring clinician to discuss the imaging report": lazy_gettext(
        "Virtual consultation with the referring clinician to discuss the imaging report"),
}
# Plain-language names of the body parts referrals name most (DICOM Body Part Examined, lower case).
BODY_PARTS: dict[str, Any] = {
    "chest": lazy_gettext("chest"),
    "head": lazy_gettext("head"),
    "brain": lazy_gettext("brain"),
    "abdomen": lazy_gettext("abdomen"),
    "pelvis": lazy_gettext("pelvis"),
    "spine": lazy_gettext("spine"),
    "neck": lazy_gettext("neck"),
    "knee": lazy_gettext("knee"),
    "breast": lazy_gettext("breast"),
}
_REPEAT_SCAN = re.compile(r"Repeat (?P<modality>\S+) (?P<part>.+) to assess the (?P<count>\d+) finding\(s\)")
_PLAN_OF_REPORT = re.compile(r"Follow-up of report (?P<report>\d+)")
_DISCUSS_REPORT = re.compile(r"Discuss imaging report (?P<report>\d+): (?P<conclusion>.*)", re.DOTALL)


def body_part_word(body_part: str) -> str:
    """A DICOM body part ("CHEST") as the reader calls it; one not listed, in lower case."""
    known = BODY_PARTS.get(body_part.lower())
    return str(known) if known is not None else body_part.lower()


def task_description(task: FollowUpTask) -> str:
    description = task.description
    known = TASK_DESCRIPTIONS.get(description)
    if known is not None:
        return str(known)
    repeat = _REPEAT_SCAN.fullmatch(description)
    if repeat:
        part = body_part_word(repeat.group("part"))
        return ngettext("Repeat %(modality)s %(part)s to assess the %(num)d finding",
                        "Repeat %(modality)s %(part)s to assess the %(num)d findings",
                        int(repeat.group("count")), modality=repeat.group("modality"), part=part)
    return description


def plan_title(plan: CarePlan) -> str:
    of_report = _PLAN_OF_REPORT.fullmatch(plan.title)
    if of_report:
        return gettext("Follow-up of report %(report)s", report=of_report.group("report"))
    if plan.title == "Follow-up plan":
        return gettext("Follow-up plan")
    return plan.title


def consultation_reason(consultation: Consultation) -> str:
    """Why the consultation was opened; the report's conclusion is the radiologist's own words."""
    discuss = _DISCUSS_REPORT.fullmatch(consultation.reason)
    if discuss:
        return gettext("Discuss imaging report %(report)s: %(conclusion)s", report=discuss.group("report"),
                       conclusion=discuss.group("conclusion"))
    return consultation.reason


def template_words() -> dict[str, object]:
    """The words above for the followup pages (a blueprint context processor)."""
    return {
        "dosage_words": dosage_words, "consultation_status": consultation_status, "task_status": task_status,
        "medication_status": medication_status, "task_kind": task_kind, "task_description": task_description,
        "plan_title": plan_title, "consultation_reason": consultation_reason, "priority_word": priority_word,
        "body_part_word": body_part_word, "urgent_diameter_mm": URGENT_DIAMETER_MM,
    }
