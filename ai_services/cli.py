"""`hospital ai ...`: train, evaluate and register model versions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from ai_services.service import register_model_version
from ai_services.training import HELDOUT_SEED_BASE, evaluate_model, train_model
from hospital.db import get_db

logger = logging.getLogger(__name__)


@click.group("ai")
def ai_group() -> None:
    """The imaging AI: train, evaluate, register model versions."""


@ai_group.command("train")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("ai_services/weights"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--phantoms", "n_train_phantoms", type=int, default=48, show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
def train_command(out_dir: Path, seed: int, n_train_phantoms: int, epochs: int) -> None:
    """Train a model on synthetic phantoms (seeded, reproducible) and write weights + manifest."""
    result = train_model(out_dir, seed=seed, n_train_phantoms=n_train_phantoms, epochs=epochs)
    click.echo(f"weights: {result.weights_path} (sha256 {result.sha256})")
    click.echo(json.dumps(result.metrics.to_json(), indent=2))


@ai_group.command("evaluate")
@click.argument("weights", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--scans", type=int, default=16, show_default=True, help="held-out phantoms to evaluate on")
@with_appcontext
def evaluate_command(weights: Path | None, scans: int) -> None:
    """Held-out metrics (FROC sensitivity at 1 and 4 FP/scan, slice AUROC, ECE, by lesion size)."""
    path = weights or current_app.config["AI_WEIGHTS"]
    metrics = evaluate_model(path, heldout_seeds=range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + scans))
    click.echo(json.dumps(metrics.to_json(), indent=2))


@ai_group.command("register")
@click.argument("weights", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--activate/--no-activate", default=True, show_default=True)
@with_appcontext
def register_command(weights: Path | None, activate: bool) -> None:
    """Record a weights file (with its manifest beside it) as a model version."""
    with get_db().transaction() as session:
        version = register_model_version(session, weights or current_app.config["AI_WEIGHTS"], activate=activate)
        click.echo(f"registered {version.label} (active: {version.active})")
