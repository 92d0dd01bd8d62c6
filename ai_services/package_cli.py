"""`hospital ai package ...`: submit a partner model package, list versions, and (administrators)
approve, reject or retire one. Each command acts as a named account, with that account's rights."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.detector_package import DetectorPackError, pack_detector
from ai_services.models import ModelPackage
from ai_services.package_service import (
    approve_package,
    packages_for,
    reject_package,
    retire_package,
    submit_package,
)
from ai_services.routing import add_routing_rule
from hospital.db import get_db
from hospital.errors import DomainError
from hospital.models import User

logger = logging.getLogger(__name__)

AS_OPTION = click.option("--as", "username", required=True, help="the account acting (a partner or an administrator)")


def _account(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None:
        raise click.ClickException(f"no active account named {username!r}")
    return user


def _line(package: ModelPackage) -> str:
    reason = package.decision_reason or package.check_report.get("reason") or ""
    return f"{package.id}\t{package.label}\t{package.status.value}\t{package.partner_organization.name}\t{reason}"


def held_out_lines(check_report: dict[str, Any] | None) -> list[str]:
    """The held-out evaluation of a package's checks (ai_services.held_out) as indented lines: each
    metric with its 95% CI and count, and each claim beside it, flagged where the set does not
    bear it out."""
    held = (check_report or {}).get("held_out")
    if not held:
        return []
    head = (f"  held-out {held['set']}: {held['n_cases']} cases ({held['n_lesion_free']} lesion-free), "
            f"{held['n_lesions']} lesions, {held['seconds']} s")
    if held.get("reason"):
        return [f"{head}: failed: {held['reason']}"]
    if held.get("not_evaluated"):
        return [f"{head}: not evaluated: {held['not_evaluated']}"]
    lines = [head]
    for metric in held["metrics"]:
        if metric["value"] is None:
            lines.append(f"    {metric['name']}: not measured ({metric['note']})")
            continue
        ci = f"95% CI {metric['ci'][0]:.2f}-{metric['ci'][1]:.2f}; " if metric["ci"] else ""
        line = f"    {metric['name']} {metric['value']:.2f} ({ci}{metric['n']} {metric['unit']})"
        for claim in held["claims"]:
            if claim["metric"] == metric["name"]:
                flag = f" ({claim['position'].upper()} the measured 95% CI)" if claim["better_than_measured"] else ""
                line += f"; claimed {claim['key']}={claim['claimed']}{flag}"
        lines.append(line)
    return lines


@click.group("package")
def package_group() -> None:
    """Model packages: submit, list, approve, reject, retire; pack the platform's own detector as one."""


@package_group.command("submit")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@AS_OPTION
@with_appcontext
def submit_command(source: Path, username: str) -> None:
    """Submit a package (zip or directory); its checks run next (at once when no Redis is set)."""
    try:
        with get_db().transaction() as session:
            package = submit_package(session, source, _account(session, username), Path(current_app.config["AI_MODELS_DIR"]))
            package_id, label = package.id, package.label
    except DomainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"submitted {label} as package {package_id}")
    with get_db().session() as session:
        checked = session.get(ModelPackage, package_id)
        if checked is not None:
            click.echo(f"status: {checked.status.value}")
            if checked.check_report.get("reason"):
                click.echo(f"checks: {checked.check_report['reason']}")
            for line in held_out_lines(checked.check_report):
                click.echo(line)


@package_group.command("pack-detector")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="a detector version's weights, its manifest beside them (default: AI_WEIGHTS)")
@click.option("--organization", required=True, help="the organisation the package is made by (the platform's own)")
@click.option("--price-minor", type=click.IntRange(0, 100_000_000), required=True,
              help="the price of one analysis in minor units (8000 = 80.00)")
@click.option("--currency", required=True, help="ISO 4217 code, e.g. EUR or CNY")
@click.option("--share-bp", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="the maker's share of each analysis's price, in basis points")
@with_appcontext
def pack_detector_command(dest: Path, weights: Path | None, organization: str, price_minor: int, currency: str,
                          share_bp: int) -> None:
    """Lay out the platform's lesion detector as a model package (a zip at DEST), to submit like a partner's."""
    try:
        written = pack_detector(weights or Path(current_app.config["AI_WEIGHTS"]), dest,
                                partner_organization=organization, price_minor=price_minor, currency=currency,
                                partner_share_bp=share_bp)
    except DetectorPackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {written}")


@package_group.command("list")
@AS_OPTION
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def list_command(username: str, as_json: bool) -> None:
    """Every version the account may read, retired and refused ones included."""
    with get_db().session() as session:
        packages = packages_for(session, _account(session, username))
        if as_json:
            click.echo(json.dumps([{"id": p.id, "name": p.name, "version": p.version, "status": p.status.value,
                                    "organization": p.partner_organization.name, "check_report": p.check_report,
                                    "decision_reason": p.decision_reason} for p in packages], indent=2))
            return
        for package in packages:
            click.echo(_line(package))
            for line in held_out_lines(package.check_report):
                click.echo(line)


def _decision(action: str) -> click.Command:
    @click.argument("package_id", type=int)
    @AS_OPTION
    @click.option("--reason", default="", help="why (required to reject)")
    @with_appcontext
    def command(package_id: int, username: str, reason: str) -> None:
        decide = {"approve": approve_package, "reject": reject_package, "retire": retire_package}[action]
        try:
            with get_db().transaction() as session:
                package = decide(session, package_id, _account(session, username), reason)
                click.echo(f"{package.label}: {package.status.value}")
        except DomainError as exc:
            raise click.ClickException(str(exc)) from exc

    command.__doc__ = {"approve": "Approve a package that passed its checks (administrators).",
                       "reject": "Reject a package, with the reason the partner will read (administrators).",
                       "retire": "Retire an approved package: it stops running, stays readable (administrators)."}[action]
    return click.command(action)(command)


for _action in ("approve", "reject", "retire"):
    package_group.add_command(_decision(_action))


@package_group.command("route")
@click.argument("package_name")
@click.option("--modality", required=True, help="DICOM modality the rule matches, e.g. CT")
@click.option("--body-part", default=None, help="Body Part Examined (default: any)")
@click.option("--reason", "reason_contains", default=None, help="words the referral reason must contain (default: any)")
@click.option("--centre", "centre_id", type=int, default=None, help="imaging centre id (default: any)")
@AS_OPTION
@with_appcontext
def route_command(package_name: str, modality: str, body_part: str | None, reason_contains: str | None,
                  centre_id: int | None, username: str) -> None:
    """Add a routing rule: matching studies are read by the package's newest approved version."""
    try:
        with get_db().transaction() as session:
            rule = add_routing_rule(session, _account(session, username), package_name=package_name,
                                    modality=modality, body_part=body_part, reason_contains=reason_contains,
                                    centre_id=centre_id)
            click.echo(f"rule {rule.id}: {rule.modality} {rule.body_part or 'any body part'} -> {rule.package_name}")
    except DomainError as exc:
        raise click.ClickException(str(exc)) from exc
