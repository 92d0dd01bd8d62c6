"""Partner model packages from submission to retirement: a partner submits in its own
organisation's name, the sandbox checks, an administrator approves, rejects or retires, and every
version stays readable."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import ModelPackage, PackageStatus
from ai_services.package_service import (
    CHECK_JOB,
    approve_package,
    check_package,
    package_for,
    packages_for,
    reject_package,
    retire_package,
    submit_package,
)
from ai_services.sandbox import SandboxLimits
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.models import JobRecord, Organization, OrganizationKind, Role, User
from hospital.seed import DemoSeed
from tests.ai_services.package_factory import (
    make_classifier_package,
    make_fine_then_failing_package,
    make_torchscript_package,
)

QUICK = SandboxLimits(wall_seconds=60, cpu_seconds=60)


def test_a_partner_package_is_submitted_checked_approved_and_retired_and_stays_readable(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    partner, admin = demo.users["partner"], demo.users["admin"]
    package = submit_package(db_session, make_classifier_package(tmp_path / "a"), partner, tmp_path / "models")
    assert package.status is PackageStatus.SUBMITTED
    assert package.partner_organization.name == "Acme Imaging AI"
    assert (package.price_minor, package.currency, package.partner_share_bp, package.output_kind) == (
        1200, "EUR", 7000, "classification")
    assert (Path(package.storage_path) / "weights.pt").is_file()
    jobs = db_session.scalars(select(JobRecord).where(JobRecord.handler == CHECK_JOB)).all()
    assert [job.payload for job in jobs] == [{"package_id": package.id}]

    with pytest.raises(Conflict, match="only a package that passed its checks"):
        approve_package(db_session, package.id, admin)
    checked = check_package(db_session, package.id, QUICK, held_out_cases=3)
    assert checked is not None and checked.status is PackageStatus.AWAITING_APPROVAL, checked.check_report
    assert checked.check_report["passed"] is True and len(checked.check_report["cases"]) == 3
    held_out = checked.check_report["held_out"]
    assert held_out["passed"] and held_out["n_cases"] == 3 and held_out["set"] == "platform-held-out-v1"
    assert check_package(db_session, package.id, QUICK) is None  # a second delivery changes nothing

    with pytest.raises(Forbidden):
        approve_package(db_session, package.id, partner)
    approve_package(db_session, package.id, admin, "reviewed the validation report")
    assert (package.status, package.decided_by_user_id) == (PackageStatus.APPROVED, admin.id)

    retire_package(db_session, package.id, admin, "superseded")
    assert package.status is PackageStatus.RETIRED and package.retired_at is not None
    assert package_for(db_session, package.id, partner).manifest["name"] == "nodule-classifier"
    assert (Path(package.storage_path) / "weights.pt").is_file()
    with pytest.raises(Conflict):
        retire_package(db_session, package.id, admin)


def test_a_package_that_crashes_on_the_held_out_set_fails_its_checks_with_that_reason(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    package = submit_package(db_session, make_fine_then_failing_package(tmp_path / "a", crash=True),
                             demo.users["partner"], tmp_path / "models")
    check_package(db_session, package.id, QUICK, held_out_cases=6)  # more cases in one run than the reference studies
    assert package.status is PackageStatus.CHECKS_FAILED
    assert package.check_report["reason"].startswith("the model failed on the held-out set: ")
    assert package.check_report["held_out"]["reason"] == package.check_report["reason"]


def test_a_package_that_fails_its_checks_is_recorded_with_the_reason_and_can_only_be_rejected(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    partner, admin = demo.users["partner"], demo.users["admin"]
    source = make_torchscript_package(tmp_path / "a", output={"kind": "classification", "classes": ["a", "b", "c"]})
    package = submit_package(db_session, source, partner, tmp_path / "models")
    check_package(db_session, package.id, QUICK)
    assert package.status is PackageStatus.CHECKS_FAILED
    assert "output shape [1, 2]" in package.check_report["reason"]
    with pytest.raises(Conflict):
        approve_package(db_session, package.id, admin)
    with pytest.raises(InvalidInput, match="say why"):
        reject_package(db_session, package.id, admin, "  ")
    reject_package(db_session, package.id, admin, "wrong number of classes")
    assert package.status is PackageStatus.REJECTED and package.decision_reason == "wrong number of classes"


def test_a_malformed_package_is_refused_with_the_reason_and_leaves_nothing(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    source = make_classifier_package(tmp_path / "a", partner_share_bp=-1)
    with pytest.raises(InvalidInput, match="package refused: manifest does not match the schema: partner_share_bp"):
        submit_package(db_session, source, demo.users["partner"], tmp_path / "models")
    assert db_session.scalars(select(ModelPackage)).all() == []
    assert [p.name for p in (tmp_path / "models" / "packages" / ".incoming").iterdir()] == []


def test_a_partner_submits_only_in_its_own_organisations_name(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    source = make_classifier_package(tmp_path / "a", partner_organization="Other Vision Ltd")
    with pytest.raises(InvalidInput, match="this account submits for 'Acme Imaging AI'"):
        submit_package(db_session, source, demo.users["partner"], tmp_path / "models")
    with pytest.raises(InvalidInput, match="no organisation named 'Other Vision Ltd'"):
        submit_package(db_session, source, demo.users["admin"], tmp_path / "models")
    with pytest.raises(Forbidden):
        submit_package(db_session, make_classifier_package(tmp_path / "b"), demo.users["clinician"], tmp_path / "models")


def test_a_version_is_never_replaced_but_the_same_package_twice_is_one_submission(
    db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    partner = demo.users["partner"]
    first = submit_package(db_session, make_classifier_package(tmp_path / "a"), partner, tmp_path / "models")
    again = submit_package(db_session, make_classifier_package(tmp_path / "b"), partner, tmp_path / "models")
    assert again.id == first.id
    with pytest.raises(Conflict, match="send this one under a new version"):
        submit_package(db_session, make_classifier_package(tmp_path / "c", intended_use="x" * 40), partner,
                       tmp_path / "models")
    second = submit_package(db_session, make_classifier_package(tmp_path / "d", version="1.1.0"), partner,
                            tmp_path / "models")
    assert [p.version for p in packages_for(db_session, partner)] == ["1.0.0", "1.1.0"]
    assert first.storage_path != second.storage_path


def test_partners_read_only_their_own_packages(db_session: Session, demo: DemoSeed, tmp_path: Path) -> None:
    package = submit_package(db_session, make_classifier_package(tmp_path / "a"), demo.users["partner"],
                             tmp_path / "models")
    rival_org = Organization(name="Other Vision Ltd", kind=OrganizationKind.AI_PARTNER)
    db_session.add(rival_org)
    db_session.flush()
    rival = User(username="rival", password_hash="x", role=Role.PARTNER, organization_id=rival_org.id)
    db_session.add(rival)
    db_session.flush()
    assert packages_for(db_session, rival) == []
    assert packages_for(db_session, demo.users["clinician"]) == []
    assert packages_for(db_session, demo.users["admin"]) == [package]
    with pytest.raises(NotFound):
        package_for(db_session, package.id, rival)
