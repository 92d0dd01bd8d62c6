"""`hospital ai ...`: train, evaluate, register and retrain model versions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from ai_services.jobs import retraining_output_dir
from ai_services.retraining import RetrainConfig, retrain
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


@ai_group.command("retrain")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="where candidate weights go (default: AI_MODELS_DIR or <instance>/models)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=RetrainConfig.steps, show_default=True)
@click.option("--margin", type=float, default=RetrainConfig.margin, show_default=True,
              help="primary-metric gain needed to promote")
@click.option("--tolerance", type=float, default=RetrainConfig.tolerance, show_default=True,
              help="largest drop allowed on any secondary check")
@with_appcontext
def retrain_command(out_dir: Path | None, seed: int, steps: int, margin: float, tolerance: float) -> None:
    """Fine-tune a candidate on signed reports' reviewed findings; promote it only if it is better."""
    config = RetrainConfig(**{**current_app.config.get("AI_RETRAIN_CONFIG", {}),
                              "seed": seed, "steps": steps, "margin": margin, "tolerance": tolerance})
    with get_db().transaction() as session:
        version = retrain(session, Path(current_app.config["DICOM_STORAGE_DIR"]),
                          out_dir or retraining_output_dir(current_app), config)
        if version is None:
            click.echo("nothing to retrain (no active model, too few new labels, or these labels were already used)")
            return
        click.echo(f"{version.label}: {version.status.value}")
        click.echo(version.decision_reason or "")
