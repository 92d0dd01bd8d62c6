"""Retention: how long each class of data is kept, legal holds that keep it longer, and the run
that deletes what a rule names once it is past its period and not on hold.

The promise: **nothing is deleted that a rule does not name.** A class with no rule is kept for
ever; the run only ever looks at classes with a rule, and every deletion is written to the audit
trail (one row per study, one per batch of job records or archived audit rows).

Classes (`DataClass`):

- `job_records`: durable job records that finished (`done`) before the cutoff; queued, running and
  failed ones are never removed (they are owed work). Job records name no patient, so holds do not
  apply to them.
- `audit`: the audit trail is a hash chain, so rows cannot simply be deleted. Retention of audit
  means: the oldest rows (a prefix of the chain, recorded before the cutoff and stopping before the
  first row about a patient on hold) are written to a JSON-lines file in `AUDIT_ARCHIVE_DIR`, a
  checkpoint row records the last archived row's hash and the file's SHA-256, and only then are
  those rows deleted. The database allows deleting exactly the rows a checkpoint covers (migration
  0028); `verify_chain` starts the chain at the checkpoint. The application's database role may not
  delete audit rows at all (`hospital db grant-app-role`), so this class runs from
  `hospital retention run` with the owner's `DATABASE_URL`, not from the periodic job.
- `images` and `ai_outputs`: owned by the image archive, which registers them
  (`register_retention_class`); a held patient or study is skipped and listed as kept.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hospital.audit import record_access, verify_chain
from hospital.clock import utcnow
from hospital.errors import InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import AuditCheckpoint, AuditEvent, JobRecord, JobStatus, LegalHold, Patient, RetentionRule, User
from hospital.periodic import register_periodic

logger = logging.getLogger(__name__)

MAX_KEEP_DAYS = 100 * 366
SOURCE = "retention"
_CLASSES_KEY = "hospital.retention.classes"
_USAGE_KEY = "hospital.retention.usage"


class DataClass(str, enum.Enum):
    IMAGES = "images"
    AI_OUTPUTS = "ai_outputs"
    AUDIT = "audit"
    JOB_RECORDS = "job_records"


# What the Storage page calls each class, in its reader's language.
CLASS_LABELS = {
    DataClass.IMAGES: _l("Images (DICOM instances of acquired studies)"),
    DataClass.AI_OUTPUTS: _l("Derived AI outputs (instances the model produced)"),
    DataClass.AUDIT: _l("Audit trail rows (archived to a file, then checkpointed)"),
    DataClass.JOB_RECORDS: _l("Finished job records"),
}


# --- rules and holds ------------------------------------------------------------------------------

def parse_data_class(raw: str) -> DataClass:
    try:
        return DataClass(raw)
    except ValueError:
        raise InvalidInput(_("data class must be one of %(choices)s, got %(value)s",
                             choices=", ".join(c.value for c in DataClass), value=repr(raw))) from None


def set_rule(session: Session, admin: User | None, data_class: DataClass, keep_days: int) -> RetentionRule:
    if not 1 <= keep_days <= MAX_KEEP_DAYS:
        raise InvalidInput(_("keep days must be between 1 and %(max)d, got %(num)d", max=MAX_KEEP_DAYS, num=keep_days))
    rule = session.scalar(select(RetentionRule).where(RetentionRule.data_class == data_class.value))
    if rule is None:
        rule = RetentionRule(data_class=data_class.value, keep_days=keep_days)
        session.add(rule)
    rule.keep_days = keep_days
    rule.updated_by_user_id = admin.id if admin is not None else None
    session.flush()
    record_access(session, admin, "U", "RetentionRule", rule.id, description=f"{data_class.value}: keep {keep_days} days")
    return rule


def remove_rule(session: Session, admin: User | None, data_class: DataClass) -> None:
    """The class is kept for ever again."""
    rule = session.scalar(select(RetentionRule).where(RetentionRule.data_class == data_class.value))
    if rule is None:
        raise NotFound(_("no retention rule for %(data_class)s", data_class=data_class.value))
    record_access(session, admin, "D", "RetentionRule", rule.id, description=f"{data_class.value}: kept for ever")
    session.delete(rule)
    session.flush()


def rules(session: Session) -> dict[DataClass, RetentionRule]:
    return {DataClass(rule.data_class): rule for rule in session.scalars(select(RetentionRule))}


def place_hold(session: Session, admin: User | None, *, reason: str, patient_id: int | None = None,
               study_instance_uid: str | None = None) -> LegalHold:
    reason = reason.strip()
    study_instance_uid = (study_instance_uid or "").strip() or None
    if not reason:
        raise InvalidInput(_("a legal hold needs a reason (the case or request it serves)"))
    if (patient_id is None) == (study_instance_uid is None):
        raise InvalidInput(_("a legal hold is on one patient or on one study (Study Instance UID), not both or "
                             "neither"))
    if patient_id is not None and session.get(Patient, patient_id) is None:
        raise NotFound(_("no patient %(id)s", id=patient_id))
    if study_instance_uid is not None and (len(study_instance_uid) > 64
                                           or not all(c.isdigit() or c == "." for c in study_instance_uid)):
        raise InvalidInput(_("a Study Instance UID is digits and dots, at most 64, got %(value)s",
                             value=repr(study_instance_uid)))
    hold = LegalHold(patient_id=patient_id, study_instance_uid=study_instance_uid, reason=reason,
                     placed_by_user_id=admin.id if admin is not None else None)
    session.add(hold)
    session.flush()
    record_access(session, admin, "C", "LegalHold", hold.id, patient_id=patient_id,
                  description=f"legal hold placed on {_hold_target(hold)}: {reason}")
    return hold


def patient_id_by_mrn(session: Session, mrn: str) -> int:
    patient_id = session.scalar(select(Patient.id).where(Patient.mrn == mrn.strip()))
    if patient_id is None:
        raise NotFound(_("no patient has the MRN %(mrn)s", mrn=repr(mrn.strip()[:64])))
    return patient_id


def release_hold(session: Session, admin: User | None, hold_id: int) -> LegalHold:
    hold = session.get(LegalHold, hold_id)
    if hold is None or hold.released_at is not None:
        raise NotFound(_("no active legal hold %(id)s", id=hold_id))
    hold.released_at = utcnow()
    hold.released_by_user_id = admin.id if admin is not None else None
    session.flush()
    record_access(session, admin, "U", "LegalHold", hold.id, patient_id=hold.patient_id,
                  description=f"legal hold released on {_hold_target(hold)}")
    return hold


def active_holds(session: Session) -> list[LegalHold]:
    return list(session.scalars(select(LegalHold).where(LegalHold.released_at.is_(None)).order_by(LegalHold.id)))


@dataclass(frozen=True)
class Holds:
    """The active holds, as the run asks them: is this patient's or this study's data held?"""

    patient_ids: frozenset[int]
    study_uids: frozenset[str]

    def holds(self, patient_id: int | None, study_uid: str | None = None) -> bool:
        return (patient_id is not None and patient_id in self.patient_ids) or (
            study_uid is not None and study_uid in self.study_uids)


def current_holds(session: Session) -> Holds:
    held = active_holds(session)
    return Holds(frozenset(h.patient_id for h in held if h.patient_id is not None),
                 frozenset(h.study_instance_uid for h in held if h.study_instance_uid is not None))


def _hold_target(hold: LegalHold) -> str:
    return f"patient {hold.patient_id}" if hold.patient_id is not None else f"study {hold.study_instance_uid}"


# --- what a stage deletes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassOutcome:
    data_class: DataClass
    keep_days: int
    cutoff: datetime
    deleted: list[str] = field(default_factory=list)  # what was (or, dry run, would be) deleted
    kept_on_hold: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    note: str = ""


# A stage's retention for one class: given the session, the cutoff, the holds and dry_run, delete
# (or only list) what is past the cutoff and not held, auditing each deletion; return the outcome.
ClassRetention = Callable[[Flask, Session, datetime, Holds, bool], tuple[list[str], list[str], int]]


def register_retention_class(app: Flask, data_class: DataClass, run: ClassRetention) -> None:
    app.extensions[_CLASSES_KEY][data_class] = run


@dataclass(frozen=True)
class StorageUsage:
    """What one centre's stored data takes (the Storage page); a stage that stores files reports it."""

    organization_id: int | None
    label: str
    studies: int
    instances: int
    size_bytes: int


StorageUsageReader = Callable[[Session], list[StorageUsage]]


def register_storage_usage(app: Flask, read: StorageUsageReader) -> None:
    app.extensions[_USAGE_KEY].append(read)


def storage_usage(app: Flask, session: Session) -> list[StorageUsage]:
    return [usage for read in app.extensions[_USAGE_KEY] for usage in read(session)]


def init_app(app: Flask) -> None:
    app.extensions[_CLASSES_KEY] = {}
    app.extensions[_USAGE_KEY] = []
    if app.config.get("RETENTION_EVERY_SECONDS"):
        register_periodic(app, "hospital.retention.retention_job", app.config["RETENTION_EVERY_SECONDS"])


def retention_job(session: Session) -> None:
    """The periodic run: every class with a rule but the audit trail, which needs the owner's role."""
    run_retention(current_app._get_current_object(), session, dry_run=False,  # type: ignore[attr-defined]
                  classes=[c for c in DataClass if c is not DataClass.AUDIT])


@dataclass(frozen=True)
class RetentionReport:
    dry_run: bool
    outcomes: list[ClassOutcome]


def run_retention(app: Flask, session: Session, *, dry_run: bool, now: datetime | None = None,
                  classes: Sequence[DataClass] | None = None) -> RetentionReport:
    """Apply every rule (or those of `classes`): delete what each names past its period, not held."""
    now = now or utcnow()
    holds = current_holds(session)
    outcomes = []
    for data_class, rule in sorted(rules(session).items(), key=lambda item: item[0].value):
        if classes is not None and data_class not in classes:
            continue
        cutoff = now - timedelta(days=rule.keep_days)
        if data_class is DataClass.JOB_RECORDS:
            deleted, held, freed, note = _job_records(session, cutoff, dry_run), list[str](), 0, ""
        elif data_class is DataClass.AUDIT:
            deleted, held, note = _audit(app, session, cutoff, holds, dry_run)
            freed = 0
        else:
            run = app.extensions[_CLASSES_KEY].get(data_class)
            if run is None:
                outcomes.append(ClassOutcome(data_class, rule.keep_days, cutoff,
                                             note="no stage handles this class here: nothing deleted"))
                continue
            deleted, held, freed = run(app, session, cutoff, holds, dry_run)
            note = ""
        outcomes.append(ClassOutcome(data_class, rule.keep_days, cutoff, deleted, held, freed, note))
        logger.info("retention %s%s: %d deleted, %d kept on hold", data_class.value, " (dry run)" if dry_run else "",
                    len(deleted), len(held))
    return RetentionReport(dry_run, outcomes)


def _job_records(session: Session, cutoff: datetime, dry_run: bool) -> list[str]:
    ids = list(session.scalars(select(JobRecord.id).where(
        JobRecord.status == JobStatus.DONE, JobRecord.finished_at < cutoff).order_by(JobRecord.id)))
    if ids and not dry_run:
        session.execute(delete(JobRecord).where(JobRecord.id.in_(ids)))
        record_access(session, None, "D", "JobRecord", f"{ids[0]}..{ids[-1]}", source=SOURCE,
                      description=f"retention: {len(ids)} done job records finished before {cutoff.isoformat()}")
    return [f"job_record {i}" for i in ids]


def _audit(app: Flask, session: Session, cutoff: datetime, holds: Holds,
           dry_run: bool) -> tuple[list[str], list[str], str]:
    """Archive, checkpoint and delete the oldest audit rows recorded before the cutoff."""
    first_kept = session.scalar(select(func.min(AuditEvent.id)).where(AuditEvent.recorded_at >= cutoff))
    first_held = None
    if holds.patient_ids:
        first_held = session.scalar(select(func.min(AuditEvent.id)).where(AuditEvent.patient_id.in_(holds.patient_ids)))
    stops = [i for i in (first_kept, first_held) if i is not None]
    # Counted, not loaded: after years the prefix can be millions of rows (the file is streamed below).
    prefix = AuditEvent.id < min(stops) if stops else AuditEvent.id.is_not(None)
    first, last, count = session.execute(
        select(func.min(AuditEvent.id), func.max(AuditEvent.id), func.count()).where(prefix)).one()
    held_note = [f"audit rows from {first_held} on (a patient on hold)"] if first_held is not None and (
        first_kept is None or first_held < first_kept) else []
    if not count:
        return [], held_note, ""
    described = [f"audit_event {first}..{last} ({count} rows)"]
    if dry_run:
        return described, held_note, ""
    # A chain that does not verify is not archived: the file must carry rows an auditor can recheck.
    report = verify_chain(session)
    if report.broken is not None:
        raise InvalidInput(f"the audit chain is broken at {report.broken.event_id} ({report.broken.reason}): "
                           "nothing archived; investigate first")
    directory = Path(app.config["AUDIT_ARCHIVE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    name = f"audit-{first:012d}-{last:012d}.jsonl"
    rows = session.scalars(select(AuditEvent).where(AuditEvent.id <= last).order_by(AuditEvent.id)
                           .execution_options(yield_per=1000))
    digest, written = _write_archive(directory / name, rows)
    if written != count:  # cannot happen under the trail's own refusals; never remove rows not archived
        raise InvalidInput(f"audit rows changed while archiving ({written} written, {count} counted): nothing removed")
    head_hash = session.scalar(select(AuditEvent.row_hash).where(AuditEvent.id == last)) or ""
    session.add(AuditCheckpoint(first_event_id=first, up_to_event_id=last, rows=count,
                                head_hash=head_hash, archive_name=name, archive_sha256=digest))
    session.flush()
    session.execute(delete(AuditEvent).where(AuditEvent.id <= last),
                    execution_options={"synchronize_session": False})
    record_access(session, None, "D", "AuditEvent", f"{first}..{last}", source=SOURCE,
                  description=f"retention: {count} audit rows recorded before {cutoff.isoformat()} archived to "
                              f"{name} (sha256 {digest}) and removed")
    return described, held_note, f"archived to {directory / name}"


def _write_archive(path: Path, rows: Iterable[AuditEvent]) -> tuple[str, int]:
    """Every column of every row, one JSON object a line, fsynced before the rows may go; returns
    the file's SHA-256 and the number of rows written."""
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as out:
        for row in rows:
            written += 1
            line = json.dumps({
                "id": row.id, "recorded_at": row.recorded_at.isoformat(), "user_id": row.user_id,
                "action": row.action, "entity_type": row.entity_type, "entity_id": row.entity_id,
                "patient_id": row.patient_id, "outcome": row.outcome, "description": row.description,
                "source": row.source, "prev_hash": row.prev_hash, "row_hash": row.row_hash,
            }, sort_keys=True).encode("utf-8") + b"\n"
            out.write(line)
            digest.update(line)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), written
