"""Routing rules decide which approved partner models read a study: by modality, body part,
referral reason and centre; several per study; never outside a package's declared use; never a
retired version."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from ai_services.models import ModelPackage, PackageStatus
from ai_services.package_service import approve_package, retire_package, submit_package
from ai_services.routing import StudyFacts, add_routing_rule, packages_for_study
from hospital.errors import Forbidden, InvalidInput
from hospital.seed import DemoSeed
from tests.ai_services.package_factory import make_classifier_package


def approved(db_session: Session, demo: DemoSeed, tmp_path: Path, **overrides: object) -> ModelPackage:
    package = submit_package(db_session, make_classifier_package(tmp_path, **overrides), demo.users["partner"],
                             tmp_path / "models")
    package.status = PackageStatus.AWAITING_APPROVAL  # the sandbox itself is tested in test_sandbox
    return approve_package(db_session, package.id, demo.users["admin"])


def chest_ct(demo: DemoSeed, reason: str = "cough for six weeks") -> StudyFacts:
    return StudyFacts(modality="CT", body_part="CHEST", reason=reason, centre_id=demo.imaging_centre.id)


def test_several_models_read_one_study_and_rules_filter_by_reason_and_centre(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    admin = demo.users["admin"]
    classifier = approved(db_session, demo, tmp_path / "a")
    nodules = approved(db_session, demo, tmp_path / "b", name="nodule-triage")
    add_routing_rule(db_session, admin, package_name="nodule-classifier", modality="ct", body_part="chest")
    add_routing_rule(db_session, admin, package_name="nodule-triage", modality="CT", reason_contains="Nodule",
                     centre_id=demo.imaging_centre.id)

    assert packages_for_study(db_session, chest_ct(demo)) == [classifier]
    assert packages_for_study(db_session, chest_ct(demo, "follow-up of a lung nodule")) == [classifier, nodules]
    other_centre = StudyFacts("CT", "CHEST", "lung nodule", centre_id=demo.clinic.id)
    assert packages_for_study(db_session, other_centre) == [classifier]
    assert packages_for_study(db_session, StudyFacts("MR", "CHEST", "lung nodule", demo.imaging_centre.id)) == []


def test_a_rule_cannot_send_a_model_outside_its_declared_use(db_session: Session, demo: DemoSeed,
                                                             tmp_path: Path) -> None:
    approved(db_session, demo, tmp_path)  # declared for CT CHEST
    add_routing_rule(db_session, demo.users["admin"], package_name="nodule-classifier", modality="CT")
    assert packages_for_study(db_session, StudyFacts("CT", "ABDOMEN", "pain", demo.imaging_centre.id)) == []


def test_the_newest_approved_version_runs_and_a_retired_one_never(db_session: Session, demo: DemoSeed,
                                                                   tmp_path: Path) -> None:
    admin = demo.users["admin"]
    first = approved(db_session, demo, tmp_path / "a")
    second = approved(db_session, demo, tmp_path / "b", version="2.0.0")
    add_routing_rule(db_session, admin, package_name="nodule-classifier", modality="CT", body_part="CHEST")
    assert packages_for_study(db_session, chest_ct(demo)) == [second]
    retire_package(db_session, second.id, admin)
    assert packages_for_study(db_session, chest_ct(demo)) == [first]
    retire_package(db_session, first.id, admin)
    assert packages_for_study(db_session, chest_ct(demo)) == []


def test_only_an_administrator_sets_a_rule_for_a_package_that_exists(db_session: Session, demo: DemoSeed,
                                                                     tmp_path: Path) -> None:
    approved(db_session, demo, tmp_path)
    with pytest.raises(Forbidden):
        add_routing_rule(db_session, demo.users["partner"], package_name="nodule-classifier", modality="CT")
    with pytest.raises(InvalidInput, match="no model package named 'unknown'"):
        add_routing_rule(db_session, demo.users["admin"], package_name="unknown", modality="CT")
    with pytest.raises(InvalidInput, match="DICOM modality code"):
        add_routing_rule(db_session, demo.users["admin"], package_name="nodule-classifier", modality="C T 1")
