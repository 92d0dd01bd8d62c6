"""The partner model package workflow: submit (verify and keep), check (in the sandbox), approve or
reject (an administrator), retire. Every version is kept on disk and in `model_package`, whatever
becomes of it, so a retired or refused version stays readable.

Who may do what: a partner account (role `partner`, linked to an organisation of kind
`ai_partner`) submits packages in its own organisation's name and reads only its own; an
administrator reads every package, submits in any existing organisation's name (the platform's
own models), and alone approves, rejects and retires.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.held_out import DEFAULT_HELD_OUT_CASES, evaluate_held_out
from ai_services.models import ModelPackage, ModelVersion, PackageStatus
from ai_services.packages import (
    DEFAULT_LIMITS,
    PackageLimits,
    PackageRefused,
    VerifiedPackage,
    is_platform_detector,
    verify_package,
)
from ai_services.sandbox import DEFAULT_SANDBOX_LIMITS, CheckReport, SandboxLimits, run_package_checks
from ai_services.service import ModelRegistryError, register_model_version
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.jobs import enqueue
from hospital.models import Organization, Role, User

logger = logging.getLogger(__name__)

CHECK_JOB = "ai_services.package_jobs.check_model_package"


def package_storage_dir(models_dir: Path) -> Path:
    return models_dir / "packages"


def _submitting_organization(session: Session, submitter: User, named: str) -> Organization:
    if submitter.role is Role.PARTNER:
        organization = submitter.organization
        if organization is None:
            raise Forbidden("this partner account belongs to no organisation")
        if organization.name != named:
            raise InvalidInput(f"the manifest names partner organisation {named!r}; "
                               f"this account submits for {organization.name!r}")
        return organization
    if submitter.role is Role.ADMIN:
        found = session.scalar(select(Organization).where(Organization.name == named))
        if found is None:
            raise InvalidInput(f"no organisation named {named!r} (the manifest's partner_organization)")
        return found
    raise Forbidden("only partner accounts and administrators submit model packages")


def submit_package(session: Session, source: Path, submitter: User, models_dir: Path,
                   limits: PackageLimits = DEFAULT_LIMITS) -> ModelPackage:
    """Verify the package at `source`, keep it, record it and queue its checks.

    A refused package raises `InvalidInput` with the reason and leaves nothing behind. Sending the
    same package (same manifest digest) again returns the version already recorded; another
    package under a name and version already taken is a `Conflict`: versions are never replaced.
    """
    storage = package_storage_dir(models_dir)
    incoming = storage / ".incoming" / uuid.uuid4().hex
    try:
        verified = verify_package(source, incoming, limits)
    except PackageRefused as exc:
        raise InvalidInput(f"package refused: {exc}") from exc
    try:
        organization = _submitting_organization(session, submitter, str(verified.manifest["partner_organization"]))
        if is_platform_detector(verified.manifest):
            _check_platform_detector(session, submitter, verified)
        existing = session.scalar(select(ModelPackage).where(ModelPackage.name == verified.name,
                                                             ModelPackage.version == verified.version))
        if existing is not None:
            if existing.package_sha256 == verified.digest and existing.partner_organization_id == organization.id:
                return existing
            raise Conflict(f"{verified.name} {verified.version} is already submitted with other contents; "
                           "every version is kept, so send this one under a new version")
        final = storage / verified.name / f"{verified.version}-{verified.digest[:12]}"
        if final.exists():  # left by a submission whose transaction rolled back
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        incoming.rename(final)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    package = _record(session, verified, final, organization, submitter)
    enqueue(session, CHECK_JOB, queue="ai", package_id=package.id)
    logger.info("model package %s submitted by user %s for organisation %s", package.label, submitter.id,
                organization.id)
    return package


def _check_platform_detector(session: Session, submitter: User, verified: VerifiedPackage) -> None:
    """A package that would become the platform's own detector comes from its administrators only,
    and never under a detector version already registered with other weights."""
    if submitter.role is not Role.ADMIN:
        raise Forbidden("only the platform's administrators submit a package of the platform's own detector "
                        "(runtime 'platform-detector')")
    registered = session.scalar(select(ModelVersion).where(ModelVersion.name == verified.name,
                                                          ModelVersion.version == verified.version))
    weights_sha256 = verified.manifest["files"][str(verified.manifest["weights"]["file"])]
    if registered is not None and registered.weights_sha256 != weights_sha256:
        raise Conflict(f"model version {registered.label} is already registered with other weights; "
                       "send this one under a new version")


def _record(session: Session, verified: VerifiedPackage, path: Path, organization: Organization,
            submitter: User) -> ModelPackage:
    manifest = verified.manifest
    package = ModelPackage(
        name=verified.name, version=verified.version, partner_organization_id=organization.id,
        submitted_by_user_id=submitter.id, manifest=manifest, package_sha256=verified.digest,
        storage_path=str(path), size_bytes=verified.total_bytes, output_kind=str(manifest["output"]["kind"]),
        price_minor=int(manifest["price"]["amount_minor"]), currency=str(manifest["price"]["currency"]),
        partner_share_bp=int(manifest["partner_share_bp"]), status=PackageStatus.SUBMITTED,
    )
    session.add(package)
    session.flush()
    return package


@dataclass(frozen=True)
class PackageToCheck:
    id: int
    root: Path
    manifest: dict[str, object]


def package_to_check(session: Session, package_id: int) -> PackageToCheck | None:
    """The package if it still waits for its checks (None: gone or already checked)."""
    package = session.get(ModelPackage, package_id)
    if package is None or package.status is not PackageStatus.SUBMITTED:
        return None
    return PackageToCheck(package.id, Path(package.storage_path), dict(package.manifest))


def check_package(session: Session, package_id: int, limits: SandboxLimits = DEFAULT_SANDBOX_LIMITS, *,
                  held_out_cases: int = DEFAULT_HELD_OUT_CASES, held_out_cache: Path | None = None) -> ModelPackage | None:
    """Run the sandbox checks of a submitted package and record the verdict (idempotent): the
    reference studies, then, if they pass, the held-out evaluation (`ai_services.held_out`, in
    `check_report["held_out"]`), whose crash or limit fails the checks too.

    The sandbox runs with no row lock held; the verdict is written only if the package still
    waits for it, so a second delivery of the job changes nothing.
    """
    target = package_to_check(session, package_id)
    if target is None:
        return None
    report = run_checks_and_held_out(target.root, dict(target.manifest), limits, held_out_cases=held_out_cases,
                                     held_out_cache=held_out_cache)
    package = session.get(ModelPackage, package_id, with_for_update=True)
    if package is None or package.status is not PackageStatus.SUBMITTED:
        return package
    package.check_report = report.to_json()
    package.checked_at = utcnow()
    package.status = PackageStatus.AWAITING_APPROVAL if report.passed else PackageStatus.CHECKS_FAILED
    session.flush()
    logger.info("model package %s checks: %s", package.label, "passed" if report.passed else report.reason)
    return package


def run_checks_and_held_out(root: Path, manifest: dict[str, object], limits: SandboxLimits = DEFAULT_SANDBOX_LIMITS, *,
                            held_out_cases: int = DEFAULT_HELD_OUT_CASES,
                            held_out_cache: Path | None = None) -> CheckReport:
    """The reference-study checks and, once they pass, the held-out evaluation, as one report."""
    report = run_package_checks(root, dict(manifest), limits)
    if not report.passed:
        return report
    held_out = evaluate_held_out(root, dict(manifest), limits, n_cases=held_out_cases, cache_dir=held_out_cache)
    return dataclasses.replace(report, passed=held_out.passed, reason=held_out.reason,
                               seconds=report.seconds + held_out.seconds, held_out=held_out.to_json())


def _require_admin(user: User) -> None:
    if user.role is not Role.ADMIN:
        raise Forbidden("only an administrator approves, rejects or retires model packages")


def _locked(session: Session, package_id: int) -> ModelPackage:
    package = session.get(ModelPackage, package_id, with_for_update=True)
    if package is None:
        raise NotFound(f"model package {package_id}")
    return package


def approve_package(session: Session, package_id: int, admin: User, reason: str = "") -> ModelPackage:
    _require_admin(admin)
    package = _locked(session, package_id)
    if package.status is not PackageStatus.AWAITING_APPROVAL:
        raise Conflict(f"{package.label} is {package.status.value}; only a package that passed its checks "
                       "can be approved")
    _decide(package, admin, PackageStatus.APPROVED, reason.strip() or None)
    if is_platform_detector(package.manifest):
        register_approved_detector(session, package)
    return package


def register_approved_detector(session: Session, package: ModelPackage) -> ModelVersion:
    """An approved package of the platform's detector becomes its active version: registered from
    the package's own kept files (the weights and the detector manifest beside them), linked to
    the package, and active in place of the version before it."""
    weights = Path(package.storage_path) / str(package.manifest["weights"]["file"])
    try:
        version = register_model_version(session, weights, activate=True)
    except ModelRegistryError as exc:
        raise Conflict(str(exc)) from exc
    if version.model_package_id not in (None, package.id):
        raise Conflict(f"model version {version.label} came in by another package")
    version.model_package_id = package.id
    session.flush()
    logger.info("model package %s approved: %s is the active detector", package.label, version.label)
    return version


def reject_package(session: Session, package_id: int, admin: User, reason: str) -> ModelPackage:
    _require_admin(admin)
    if not reason.strip():
        raise InvalidInput("say why the package is rejected: the partner reads the reason")
    package = _locked(session, package_id)
    if package.status not in (PackageStatus.SUBMITTED, PackageStatus.CHECKS_FAILED, PackageStatus.AWAITING_APPROVAL):
        raise Conflict(f"{package.label} is {package.status.value}; it can no longer be rejected")
    _decide(package, admin, PackageStatus.REJECTED, reason.strip())
    return package


def retire_package(session: Session, package_id: int, admin: User, reason: str = "") -> ModelPackage:
    """An approved version stops running; it stays on disk and readable."""
    _require_admin(admin)
    package = _locked(session, package_id)
    if package.status is not PackageStatus.APPROVED:
        raise Conflict(f"{package.label} is {package.status.value}; only an approved package is retired")
    running = session.scalar(select(ModelVersion).where(ModelVersion.model_package_id == package.id,
                                                       ModelVersion.active.is_(True)))
    if running is not None:
        raise Conflict(f"{package.label} is the active {running.name}: approve a package of another version "
                       "first (it takes over), then retire this one")
    package.status = PackageStatus.RETIRED
    package.retired_at = utcnow()
    if reason.strip():
        package.decision_reason = reason.strip()
    session.flush()
    return package


def _decide(package: ModelPackage, admin: User, status: PackageStatus, reason: str | None) -> None:
    package.status = status
    package.decided_by_user_id = admin.id
    package.decided_at = utcnow()
    package.decision_reason = reason


def packages_for(session: Session, user: User) -> list[ModelPackage]:
    """Every package version the user may read: all for an administrator, their organisation's for
    a partner, none for anyone else."""
    query = select(ModelPackage).order_by(ModelPackage.name, ModelPackage.submitted_at, ModelPackage.id)
    if user.role is Role.ADMIN:
        return list(session.scalars(query))
    if user.role is Role.PARTNER and user.organization_id is not None:
        return list(session.scalars(query.where(ModelPackage.partner_organization_id == user.organization_id)))
    return []


def package_for(session: Session, package_id: int, user: User) -> ModelPackage:
    """One package the user may read; another organisation's is NotFound (its existence is not theirs)."""
    package = session.get(ModelPackage, package_id)
    if package is None or not (
        user.role is Role.ADMIN
        or (user.role is Role.PARTNER and user.organization_id == package.partner_organization_id)
    ):
        raise NotFound(f"model package {package_id}")
    return package
