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
from hospital.errors import Forbidden, InvalidInput
from hospital.models import Role, User

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


def packages_for_study(session: Session, facts: StudyFacts) -> list[ModelPackage]:
    """The package versions to run on a study with these facts, by name."""
    rules = session.scalars(select(ModelRoutingRule).where(ModelRoutingRule.active.is_(True))).all()
    names = sorted({rule.package_name for rule in rules if _matches(rule, facts)})
    chosen = []
    for name in names:
        approved = session.scalars(
            select(ModelPackage)
            .where(ModelPackage.name == name, ModelPackage.status == PackageStatus.APPROVED)
            .order_by(ModelPackage.decided_at.desc(), ModelPackage.id.desc())
        ).first()
        if approved is not None and _applies(approved, facts):
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
