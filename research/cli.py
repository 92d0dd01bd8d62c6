"""`hospital research`: dataset versions (create, show, diff, export) and data-use agreements."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from hospital.db import get_db
from hospital.errors import DomainError
from research import service
from research.storage import dicom_dir, research_dir, research_secret

logger = logging.getLogger(__name__)


@click.group("research")
def research_group() -> None:
    """The research image database."""


@research_group.group("dataset")
def dataset_group() -> None:
    """Dataset versions: immutable manifests of de-identified, consented, labelled studies."""


@dataset_group.command("create")
@click.option("--licence", required=True, help="The licence / data-use terms the version is released under.")
@click.option("--by", "created_by", default="cli", show_default=True, help="Who made it (kept in the version).")
@with_appcontext
def create_command(licence: str, created_by: str) -> None:
    """Make the next version from every contribution whose patient consents now."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        with get_db().transaction() as session:
            version = service.create_dataset_version(
                session, licence=licence, created_by=created_by, dicom_dir=dicom_dir(app),
                research_dir=research_dir(app), secret=research_secret(app),
            )
            counts = version.manifest["counts"]
            click.echo(f"dataset version {version.number}: {counts['studies']} studies, {counts['instances']} "
                       f"instances, manifest sha256 {version.manifest_sha256}")
            click.echo(json.dumps({"per_institution": counts["per_institution"], "per_label": counts["per_label"]}))
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc


@dataset_group.command("diff")
@click.argument("old", type=int)
@click.argument("new", type=int)
@with_appcontext
def diff_command(old: int, new: int) -> None:
    """What changed from version OLD to version NEW (JSON)."""
    try:
        with get_db().transaction() as session:
            click.echo(json.dumps(service.diff_versions(session, old, new).as_dict(), indent=1, sort_keys=True))
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc


@dataset_group.command("export")
@click.argument("number", type=int)
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@with_appcontext
def export_command(number: int, target: Path) -> None:
    """Write version NUMBER to TARGET in the training layout (docs/research-dataset.md)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        with get_db().transaction() as session:
            service.export_version(session, number, target, research_dir(app))
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"dataset version {number} exported to {target}")


@research_group.group("agreement")
def agreement_group() -> None:
    """Data-use agreements with contributing institutions."""


@agreement_group.command("add")
@click.argument("organization_id", type=int)
@click.option("--licence", required=True)
@click.option("--reference", required=True, help="The signed agreement's document number.")
@with_appcontext
def agreement_add_command(organization_id: int, licence: str, reference: str) -> None:
    """Record that ORGANIZATION_ID agreed to its images being released under LICENCE."""
    try:
        with get_db().transaction() as session:
            agreement = service.add_data_use_agreement(session, organization_id, licence, reference)
            click.echo(f"data-use agreement {agreement.id} recorded")
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
