"""The research database's workflow: consent, contributions, de-identification into the research
store, and dataset versions (create, diff, export). Plain functions taking a session; they flush,
the caller's unit of work commits.

Consent is read when a version is made, not when a study is signed: a signed report's study is
remembered as a contribution (ids and labels only, nothing copied), and its images are
de-identified the first time a version is made while its patient says yes. A "no" after a "yes"
keeps the patient out of every later version and marks the earlier versions that hold them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_services.public import report_summary, reviewed_findings
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.models import Organization, Role, User
from imaging_orders.archive.public import study_ref, study_series
from research.deidentify import NotDeidentifiable, deidentify_file, patient_seed
from research.models import (
    ConsentDecision,
    Contribution,
    ContributionSource,
    DatasetVersion,
    DatasetVersionMark,
    DataUseAgreement,
    ResearchConsent,
    ResearchInstance,
    ResearchUidMap,
    UidKind,
)

logger = logging.getLogger(__name__)

MARK_CONSENT_WITHDRAWN = "consent withdrawn"


class DataUseNotAgreed(Conflict):
    """An export was asked for a version whose institutions have not all agreed to its licence."""


# -- consent --------------------------------------------------------------------------------------


def current_consent(session: Session, patient_id: int) -> ResearchConsent | None:
    return session.scalar(
        select(ResearchConsent).where(ResearchConsent.patient_id == patient_id, ResearchConsent.superseded_at.is_(None))
        .order_by(ResearchConsent.id.desc()).limit(1)
    )


def record_consent(session: Session, user: User, patient_id: int, decision: str) -> ResearchConsent:
    """The patient's own choice (or one an administrator records for them)."""
    if user.role is Role.PATIENT:
        if user.patient_id != patient_id:
            raise Forbidden(_("a patient may only choose for themselves"))
    elif user.role is not Role.ADMIN:
        raise Forbidden("only the patient (or an administrator for them) records research consent")
    try:
        choice = ConsentDecision(decision)
    except ValueError:
        raise InvalidInput(_("decision must be 'permit' or 'deny', not %(value)s", value=repr(decision))) from None
    now = utcnow()
    previous = current_consent(session, patient_id)
    if previous is not None:
        previous.superseded_at = now
    consent = ResearchConsent(patient_id=patient_id, decision=choice, recorded_at=now, recorded_by_user_id=user.id)
    session.add(consent)
    session.flush()
    if choice is ConsentDecision.DENY:
        _mark_versions_holding(session, patient_id, MARK_CONSENT_WITHDRAWN)
    return consent


def consenting(session: Session, patient_id: int) -> bool:
    consent = current_consent(session, patient_id)
    return consent is not None and consent.decision is ConsentDecision.PERMIT


def _mark_versions_holding(session: Session, patient_id: int, reason: str) -> None:
    mark_versions_holding(
        session, {c.id for c in session.scalars(select(Contribution).where(Contribution.patient_id == patient_id))}, reason)


def mark_versions_holding(session: Session, contributions: set[int], reason: str) -> None:
    """Record beside every version that holds one of `contributions` that it must leave it out
    from now on (the version itself never changes)."""
    if not contributions:
        return
    for version in session.scalars(select(DatasetVersion)):
        held = {int(c) for c in version.manifest.get("contributions", [])}
        for contribution_id in sorted(held & contributions):
            exists = session.scalar(select(DatasetVersionMark.id).where(
                DatasetVersionMark.dataset_version_id == version.id, DatasetVersionMark.contribution_id == contribution_id
            ))
            if exists is None:
                session.add(DatasetVersionMark(dataset_version_id=version.id, contribution_id=contribution_id, reason=reason))
    session.flush()


# -- contributions --------------------------------------------------------------------------------


def record_contribution(session: Session, report_id: int) -> Contribution | None:
    """A signed report's study becomes a contribution with its reviewed findings as labels (once:
    a second delivery of the event changes nothing). Nothing is copied here."""
    report = report_summary(session, report_id)
    if report is None or not report.signed:
        return None
    existing = session.scalar(select(Contribution).where(Contribution.study_id == report.study_id))
    if existing is not None:
        return existing
    study = study_ref(session, report.study_id)
    if study is None:
        return None
    labels = [
        {"finding": f.finding_id, "key_sop_instance_uid": f.sop_instance_uid, "slice_index": f.slice_index,
         "box": list(f.box), "diameter_mm": f.diameter_mm, "source": f.source, "decision": f.decision,
         "reviewer": f"reviewer-{f.reviewer_user_id}" if f.reviewer_user_id else None,
         "decided_at": f.decided_at.isoformat() if f.decided_at else None, "model_version": f.model_version}
        for f in reviewed_findings(session, report_id)
    ]
    contribution = Contribution(study_id=report.study_id, report_id=report_id, patient_id=report.patient_id,
                                organization_id=study.organization_id, labels=labels)
    session.add(contribution)
    session.flush()
    return contribution


def record_research_uid(session: Session, kind: UidKind, original: str, research: str) -> None:
    """Keep original -> research UID in the map that never leaves the platform (once)."""
    known = session.scalar(select(ResearchUidMap).where(ResearchUidMap.kind == kind, ResearchUidMap.original_uid == original))
    if known is None:
        session.add(ResearchUidMap(kind=kind, original_uid=original, research_uid=research))


def deidentify_contribution(
    session: Session, contribution: Contribution, dicom_dir: Path, research_dir: Path, secret: str
) -> None:
    """Copy the contribution's images into the research store, de-identified; burned-in text and
    non-images are recorded as kept out. Done once per contribution."""
    if contribution.deidentified_at is not None:
        return  # an upload is de-identified on arrival
    assert contribution.study_id is not None and contribution.patient_id is not None  # a platform study
    seed = patient_seed(secret, contribution.patient_id)
    for series in study_series(session, contribution.study_id, dicom_dir):
        for stored in series.instances:
            try:
                result = deidentify_file(stored.path, seed)
            except (NotDeidentifiable, OSError) as exc:
                logger.warning("research: instance %s kept out: %s", stored.sop_instance_uid, exc)
                continue
            record_research_uid(session, UidKind.STUDY, result.original_study_uid, result.study_uid)
            record_research_uid(session, UidKind.SERIES, result.original_series_uid, result.series_uid)
            record_research_uid(session, UidKind.INSTANCE, result.original_sop_uid, result.sop_uid)
            relative = ""
            if result.excluded_reason is None:
                relative = f"{result.study_uid}/{result.series_uid}/{result.sop_uid}.dcm"
                target = research_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(result.data)
            session.add(ResearchInstance(
                contribution_id=contribution.id, sop_instance_uid=result.sop_uid, series_instance_uid=result.series_uid,
                study_instance_uid=result.study_uid, instance_number=result.instance_number, path=relative,
                sha256=result.sha256, excluded_reason=result.excluded_reason,
            ))
    contribution.deidentified_at = utcnow()
    session.flush()


# -- dataset versions -----------------------------------------------------------------------------


def _research_uid_of(session: Session, original: str) -> str | None:
    return session.scalar(select(ResearchUidMap.research_uid).where(
        ResearchUidMap.kind == UidKind.INSTANCE, ResearchUidMap.original_uid == original))


def _study_label(labels: list[dict[str, Any]]) -> str:
    return "finding" if any(label["decision"] != "rejected" for label in labels) else "no-finding"


def manifest_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_dataset_version(
    session: Session, *, licence: str, created_by: str, dicom_dir: Path, research_dir: Path, secret: str,
    user: User | None = None,
) -> DatasetVersion:
    """A new immutable version: every contribution whose patient consents now, de-identified.
    Audited as made by `user` (the administrator; None from the command line, named `created_by`)."""
    if not licence.strip():
        raise InvalidInput("a dataset version needs a licence")
    number = (session.scalar(select(func.max(DatasetVersion.number))) or 0) + 1
    instances: list[dict[str, Any]] = []
    studies: dict[str, dict[str, Any]] = {}
    contributions: list[int] = []
    kept_out: list[dict[str, str]] = []
    for contribution in session.scalars(select(Contribution).order_by(Contribution.id)):
        if contribution.source is ContributionSource.UPLOAD:
            # The institution attested consent; its withdrawal is the contributor's to make.
            if contribution.withdrawn_at is not None:
                continue
        elif contribution.patient_id is None or not consenting(session, contribution.patient_id):
            continue
        deidentify_contribution(session, contribution, dicom_dir, research_dir, secret)
        rows = session.scalars(select(ResearchInstance).where(ResearchInstance.contribution_id == contribution.id)
                               .order_by(ResearchInstance.series_instance_uid, ResearchInstance.instance_number)).all()
        usable = [r for r in rows if r.excluded_reason is None]
        kept_out.extend({"sop_instance_uid": r.sop_instance_uid, "reason": r.excluded_reason or ""}
                        for r in rows if r.excluded_reason is not None)
        if not usable:
            continue
        institution = f"institution-{contribution.organization_id}"
        contributions.append(contribution.id)
        labels = [
            {**{k: v for k, v in label.items() if k not in ("finding", "key_sop_instance_uid")},
             "key_sop_instance_uid": _research_uid_of(session, label["key_sop_instance_uid"])}
            for label in contribution.labels
        ]
        studies[usable[0].study_instance_uid] = {"institution": institution, "label": _study_label(labels),
                                                 "findings": labels, "contribution": contribution.id}
        instances.extend(
            {"sop_instance_uid": r.sop_instance_uid, "series_instance_uid": r.series_instance_uid,
             "study_instance_uid": r.study_instance_uid, "instance_number": r.instance_number,
             "sha256": r.sha256, "path": f"studies/{r.path}", "institution": institution}
            for r in usable
        )
    manifest: dict[str, Any] = {
        "version": number, "licence": licence, "created_at": utcnow().isoformat(),
        "profile": "DICOM PS3.15 Basic Application Level Confidentiality Profile (dicognito 0.19)",
        "contributions": contributions, "instances": instances, "studies": studies, "kept_out": kept_out,
        "counts": {
            "instances": len(instances), "studies": len(studies),
            "per_institution": dict(sorted(Counter(s["institution"] for s in studies.values()).items())),
            "per_label": dict(sorted(Counter(s["label"] for s in studies.values()).items())),
        },
    }
    version = DatasetVersion(number=number, licence=licence, created_by=created_by, manifest=manifest,
                             manifest_sha256=manifest_sha256(manifest))
    session.add(version)
    session.flush()
    record_access(session, user, "C", "ResearchDatasetVersion", number,
                  description=f"dataset version made by {created_by} under licence {licence}: {len(studies)} studies, "
                              f"{len(instances)} images"[:1000])
    logger.info("research: dataset version %s made with %s instances", number, len(instances))
    return version


def get_version(session: Session, number: int) -> DatasetVersion:
    version = session.scalar(select(DatasetVersion).where(DatasetVersion.number == number))
    if version is None:
        raise NotFound(f"no dataset version {number}")
    return version


def version_marks(session: Session, version: DatasetVersion) -> list[DatasetVersionMark]:
    return list(session.scalars(select(DatasetVersionMark).where(DatasetVersionMark.dataset_version_id == version.id)
                                .order_by(DatasetVersionMark.id)))


@dataclass(frozen=True)
class VersionDiff:
    old: int
    new: int
    added_instances: tuple[str, ...]
    removed_instances: tuple[str, ...]
    added_studies: tuple[str, ...]
    removed_studies: tuple[str, ...]
    relabelled_studies: tuple[str, ...]
    counts: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "added_instances": list(self.added_instances),
                "removed_instances": list(self.removed_instances), "added_studies": list(self.added_studies),
                "removed_studies": list(self.removed_studies), "relabelled_studies": list(self.relabelled_studies),
                "counts": self.counts}


def diff_versions(session: Session, old_number: int, new_number: int) -> VersionDiff:
    old, new = get_version(session, old_number).manifest, get_version(session, new_number).manifest
    old_i = {i["sop_instance_uid"] for i in old["instances"]}
    new_i = {i["sop_instance_uid"] for i in new["instances"]}
    old_s, new_s = old["studies"], new["studies"]
    return VersionDiff(
        old=old_number, new=new_number,
        added_instances=tuple(sorted(new_i - old_i)), removed_instances=tuple(sorted(old_i - new_i)),
        added_studies=tuple(sorted(set(new_s) - set(old_s))), removed_studies=tuple(sorted(set(old_s) - set(new_s))),
        relabelled_studies=tuple(sorted(u for u in set(old_s) & set(new_s) if old_s[u]["findings"] != new_s[u]["findings"])),
        counts={"old": old["counts"], "new": new["counts"]},
    )


# -- data-use agreements and export ---------------------------------------------------------------


def add_data_use_agreement(session: Session, organization_id: int, licence: str, reference: str) -> DataUseAgreement:
    if not licence.strip() or not reference.strip():
        raise InvalidInput(_("a data-use agreement needs a licence and the signed document's reference"))
    if session.get(Organization, organization_id) is None:
        raise NotFound(_("no organization %(id)s", id=organization_id), for_people=True)
    agreement = DataUseAgreement(organization_id=organization_id, licence=licence, reference=reference)
    session.add(agreement)
    session.flush()
    return agreement


def revoke_data_use_agreement(session: Session, agreement_id: int) -> DataUseAgreement:
    """The institution no longer agrees: exports that need this agreement are refused from now on."""
    agreement = session.get(DataUseAgreement, agreement_id)
    if agreement is None:
        raise NotFound(_("no data-use agreement %(id)s", id=agreement_id), for_people=True)
    if agreement.revoked_at is None:
        agreement.revoked_at = utcnow()
        session.flush()
    return agreement


@dataclass(frozen=True)
class VersionRow:
    version: DatasetVersion
    marks: int  # contributions it must leave out of exports from now on
    added_studies: int  # against the version before it
    removed_studies: int


@dataclass(frozen=True)
class ResearchOverview:
    """What an administrator of the research database reads on its page."""

    versions: list[VersionRow]
    platform_contributions: int
    platform_consenting: int  # would be in a version made now
    uploads: int
    uploads_withdrawn: int
    agreements: list[DataUseAgreement]
    organizations: dict[int, str]


def research_overview(session: Session) -> ResearchOverview:
    versions = list(session.scalars(select(DatasetVersion).order_by(DatasetVersion.number.desc())))
    rows = []
    for index, version in enumerate(versions):
        before = versions[index + 1] if index + 1 < len(versions) else None
        new_studies, old_studies = set(version.manifest["studies"]), set(before.manifest["studies"]) if before else set()
        rows.append(VersionRow(version, len(version_marks(session, version)), len(new_studies - old_studies),
                               len(old_studies - new_studies)))
    contributions = list(session.scalars(select(Contribution)))
    platform = [c for c in contributions if c.source is ContributionSource.PLATFORM]
    uploads = [c for c in contributions if c.source is ContributionSource.UPLOAD]
    return ResearchOverview(
        versions=rows, platform_contributions=len(platform),
        platform_consenting=sum(1 for c in platform if c.patient_id is not None and consenting(session, c.patient_id)),
        uploads=len(uploads), uploads_withdrawn=sum(1 for c in uploads if c.withdrawn_at is not None),
        agreements=list(session.scalars(select(DataUseAgreement).order_by(DataUseAgreement.id.desc()))),
        organizations={row.id: row.name for row in session.execute(select(Organization.id, Organization.name))},
    )


def _agreed_institutions(session: Session, licence: str) -> set[str]:
    now = utcnow()
    rows = session.scalars(select(DataUseAgreement).where(
        DataUseAgreement.licence == licence, DataUseAgreement.revoked_at.is_(None), DataUseAgreement.valid_from <= now,
    ))
    return {f"institution-{a.organization_id}" for a in rows if a.valid_until is None or a.valid_until > now}


def export_version(session: Session, number: int, target: Path, research_dir: Path, user: User | None = None) -> Path:
    """Write the version in the training layout (docs/research-dataset.md) under `target`; audited
    (by `user`, None from the command line) with what left the database and where to.

    Refused whole when an institution in it has no data-use agreement in force for the version's
    licence, when `target` is not empty, or when a stored file no longer has its manifest hash."""
    version = get_version(session, number)
    manifest = version.manifest
    missing = sorted(set(manifest["counts"]["per_institution"]) - _agreed_institutions(session, version.licence))
    if missing:
        raise DataUseNotAgreed(
            f"dataset version {number} cannot be exported: no data-use agreement in force for licence "
            f"{version.licence!r} with {', '.join(missing)}"
        )
    if target.exists() and any(target.iterdir()):
        raise InvalidInput(f"export folder {target} is not empty")
    # A patient who withdrew after this version was made is left out of every export from now on.
    marks = version_marks(session, version)
    withdrawn = {m.contribution_id for m in marks}
    studies = {uid: s for uid, s in manifest["studies"].items() if s["contribution"] not in withdrawn}
    entries = [i for i in manifest["instances"] if i["study_instance_uid"] in studies]
    for entry in entries:
        source = research_dir / entry["path"].removeprefix("studies/")
        data = source.read_bytes() if source.exists() else b""
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise Conflict(f"research file for {entry['sop_instance_uid']} does not match the manifest")
    target.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        destination = target / entry["path"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(research_dir / entry["path"].removeprefix("studies/"), destination)
    (target / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1))
    with (target / "labels.jsonl").open("w") as labels:
        for study_uid, study in sorted(studies.items()):
            slices = sorted((i for i in entries if i["study_instance_uid"] == study_uid),
                            key=lambda i: (i["series_instance_uid"], i["instance_number"] or 0))
            labels.write(json.dumps({
                "study_instance_uid": study_uid, "label": study["label"], "institution": study["institution"],
                "series": sorted({i["series_instance_uid"] for i in slices}),
                "slices": [i["path"] for i in slices], "findings": study["findings"],
            }, sort_keys=True) + "\n")
    (target / "VERSION").write_text(
        f"dataset version {number}\nlicence {version.licence}\nmanifest sha256 {version.manifest_sha256}\n"
        + "".join(f"left out: contribution {m.contribution_id} ({m.reason} on {m.marked_at:%Y-%m-%d})\n" for m in marks)
    )
    record_access(session, user, "E", "ResearchDatasetVersion", number,
                  description=f"exported {len(studies)} studies, {len(entries)} images under licence {version.licence} "
                              f"to {target}"[:1000])
    return target
