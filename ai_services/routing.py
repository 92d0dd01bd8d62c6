"""Routing: which approved partner models read a study. Rules by modality, body part, referral
reason and centre name a package; a study gets every package a rule matches (several models per
study), each at its newest approved version, and only where the package's own manifest says it
applies to the study's modality and body part (a rule cannot send a model outside its intended
use). A retired version is never routed; the version approved before it is, if any."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import ModelPackage, ModelRoutingRule, PackageStatus
from ai_services.packages import is_platform_detector
from hospital.errors import Forbidden, InvalidInput
from hospital.models import Role, User
from imaging_orders.archive.public import SeriesFiles, StudyRef
from referrals.public import referral_summary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyFacts:
    """What routing reads of a study: DICOM Modality and Body Part Examined, the referral's reason
    in words, and the performing centre."""

    modality: str
    body_part: str | None
    reason: str
    centre_id: int | None


def _matches(rule: ModelRoutingRule, facts: StudyFacts) -> bool:
    return (
        rule.modality.upper() == facts.modality.upper()
        and (rule.body_part is None or (facts.body_part or "").upper() == rule.body_part.upper())
        and (rule.centre_id is None or rule.centre_id == facts.centre_id)
        and (not rule.reason_contains or rule.reason_contains.casefold() in facts.reason.casefold())
    )


def _applies(package: ModelPackage, facts: StudyFacts) -> bool:
    manifest = package.manifest
    return (facts.modality.upper() in manifest.get("modalities", [])
            and (facts.body_part or "").upper() in manifest.get("body_parts", []))


def study_facts(session: Session, study: StudyRef, series: SeriesFiles) -> StudyFacts:
    """What routing reads of a study: its series' modality and body part, the referral's reason
    (through the referrals stage's public face) and the performing centre."""
    referral = referral_summary(session, study.referral_id) if study.referral_id is not None else None
    return StudyFacts(modality=series.modality, body_part=series.body_part,
                      reason=referral.reason if referral is not None else "", centre_id=study.organization_id)


def detector_not_routed(session: Session, name: str, study: StudyRef, series: SeriesFiles) -> str | None:
    """Why the platform's own detector `name` is not to read a study, or None when it is: it reads
    every study its applicability gate admits until an administrator names it in a rule; from then
    on, like any package, only the studies a rule naming it matches. (The study's facts, which cost
    a query of the referral, are read only when a rule names it.)"""
    rules = session.scalars(select(ModelRoutingRule).where(ModelRoutingRule.active.is_(True),
                                                           ModelRoutingRule.package_name == name)).all()
    if not rules:
        return None
    facts = study_facts(session, study, series)
    if any(_matches(rule, facts) for rule in rules):
        return None
    return (f"not routed to {name}: none of its routing rules matches this {facts.modality} study"
            f" (body part {facts.body_part or 'not given'})")


def packages_for_study(session: Session, facts: StudyFacts) -> list[ModelPackage]:
    """The package versions to run in the sandbox on a study with these facts, by name. The
    platform's own detector is not among them: the analysis job runs it (`detector_not_routed`)."""
    rules = session.scalars(select(ModelRoutingRule).where(ModelRoutingRule.active.is_(True))).all()
    names = sorted({rule.package_name for rule in rules if _matches(rule, facts)})
    chosen = []
    for name in names:
        approved = session.scalars(
            select(ModelPackage)
            .where(ModelPackage.name == name, ModelPackage.status == PackageStatus.APPROVED)
            .order_by(ModelPackage.decided_at.desc(), ModelPackage.id.desc())
        ).first()
        if approved is not None and not is_platform_detector(approved.manifest) and _applies(approved, facts):
            chosen.append(approved)
    return chosen


def add_routing_rule(session: Session, admin: User, *, package_name: str, modality: str,
                     body_part: str | None = None, reason_contains: str | None = None,
                     centre_id: int | None = None) -> ModelRoutingRule:
    """An administrator's rule; the package must exist (in any status: a rule may be set up before
    approval, and routes nothing until a version is approved)."""
    if admin.role is not Role.ADMIN:
        raise Forbidden("only an administrator sets routing rules")
    if session.scalar(select(ModelPackage.id).where(ModelPackage.name == package_name).limit(1)) is None:
        raise InvalidInput(f"no model package named {package_name!r}")
    modality = modality.strip().upper()
    if not modality.isalpha() or not 2 <= len(modality) <= 4:
        raise InvalidInput(f"modality must be a DICOM modality code such as CT, got {modality!r}")
    rule = ModelRoutingRule(package_name=package_name, modality=modality,
                            body_part=(body_part or "").strip().upper() or None,
                            reason_contains=(reason_contains or "").strip() or None,
                            centre_id=centre_id, created_by_user_id=admin.id)
    session.add(rule)
    session.flush()
    return rule
