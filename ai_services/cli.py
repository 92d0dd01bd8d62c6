"""`hospital ai ...`: train, evaluate, register and retrain model versions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from ai_services.evaluation import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_LESION_FREE_SCANS,
    DEFAULT_SCANS_WITH_LESIONS,
    DEFAULT_VALIDATION_PHANTOMS,
    EVAL_GRIDS,
    evaluate_weights,
)
from ai_services.inference import LesionDetector
from ai_services.jobs import retraining_output_dir
from ai_services.package_cli import package_group
from ai_services.retraining import (
    DatasetExportError,
    RetrainConfig,
    evaluate_reviewed,
    labels_from_dataset_export,
    retrain,
)
from ai_services.service import register_model_version
from ai_services.training import HELDOUT_SEED_BASE, evaluate_model, train_model
from hospital.db import get_db

logger = logging.getLogger(__name__)


@click.group("ai")
def ai_group() -> None:
    """The imaging AI: train, evaluate, register model versions; partner model packages."""


ai_group.add_command(package_group)


@ai_group.command("train")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("ai_services/weights"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--phantoms", "n_train_phantoms", type=click.IntRange(1), default=48, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
              help="batches per epoch (default: as many patches as the phantoms' slices)")
@click.option("--validation-phantoms", type=click.IntRange(1), default=16, show_default=True,
              help="phantoms the confidence is calibrated on")
@click.option("--heldout-phantoms", type=click.IntRange(1), default=20, show_default=True,
              help="phantoms the held-out metrics are measured on")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="also train on an exported research dataset version (`hospital research dataset export`)")
@click.option("--dataset-heldout-percent", type=click.IntRange(0, 100), default=30, show_default=True,
              help="the dataset's studies kept out of training to measure the model on")
def train_command(out_dir: Path, seed: int, n_train_phantoms: int, epochs: int, steps_per_epoch: int | None,
                  validation_phantoms: int, heldout_phantoms: int, dataset_dir: Path | None,
                  dataset_heldout_percent: int) -> None:
    """Train a model on synthetic phantoms (seeded, reproducible), and on the labelled studies of an
    exported research dataset version when given, and write weights + manifest."""
    labels = None
    if dataset_dir is not None:
        try:  # the export is checked against its own manifest before anything trains on it
            labels = labels_from_dataset_export(dataset_dir, heldout_percent=dataset_heldout_percent)
        except DatasetExportError as exc:
            raise click.ClickException(str(exc)) from exc
        if not labels.finetune:
            raise click.ClickException(f"{dataset_dir}: the dataset version has no labelled slice outside its held-out "
                                       "studies to train on")
    result = train_model(out_dir, seed=seed, n_train_phantoms=n_train_phantoms, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, n_validation_phantoms=validation_phantoms,
                         n_heldout_phantoms=heldout_phantoms,
                         dataset_slices=labels.finetune if labels is not None else (),
                         dataset=labels.dataset if labels is not None else None)
    click.echo(f"weights: {result.weights_path} (sha256 {result.sha256})")
    click.echo(json.dumps(result.metrics.to_json(), indent=2))
    if labels is not None and labels.heldout:
        scored = evaluate_reviewed(LesionDetector.load(result.weights_path), labels.heldout)
        click.echo("the dataset's held-out studies: " + (json.dumps(scored.to_json()) if scored is not None
                                                           else "none holds a lesion to find"))


@ai_group.command("evaluate")
@click.argument("weights", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--scans-with-lesions", type=int, default=DEFAULT_SCANS_WITH_LESIONS, show_default=True,
              help="test scans with lesions per grid, from the evaluation-only generator")
@click.option("--lesion-free-scans", type=int, default=DEFAULT_LESION_FREE_SCANS, show_default=True,
              help="lesion-free test scans (with bone) per grid")
@click.option("--grid", "grids", multiple=True, type=click.Choice(list(EVAL_GRIDS)),
              help="grids to evaluate on (repeatable; default: all)")
@click.option("--bootstrap", "n_bootstrap", type=int, default=DEFAULT_BOOTSTRAP, show_default=True,
              help="bootstrap resamples of scans for the 95% CIs")
@click.option("--validation-phantoms", type=int, default=DEFAULT_VALIDATION_PHANTOMS, show_default=True,
              help="training-generator validation phantoms the operating threshold is read from")
@click.option("--training-generator", is_flag=True,
              help="instead: the old held-out metrics on the training generator (256 x 256, 1.5 mm)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of the Markdown table")
@with_appcontext
def evaluate_command(weights: Path | None, scans_with_lesions: int, lesion_free_scans: int, grids: tuple[str, ...],
                     n_bootstrap: int, validation_phantoms: int, training_generator: bool, as_json: bool) -> None:
    """Test metrics on the evaluation-only generator: FROC, study AUROC, 95% bootstrap CIs, by group.

    The default case counts keep this to a couple of minutes on two CPU cores; raise them for
    narrower intervals.
    """
    path = weights or current_app.config["AI_WEIGHTS"]
    if training_generator:
        metrics = evaluate_model(path, heldout_seeds=range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + scans_with_lesions))
        click.echo(json.dumps(metrics.to_json(), indent=2))
        return
    report = evaluate_weights(path, scans_with_lesions=scans_with_lesions, lesion_free_scans=lesion_free_scans,
                              grids=grids or tuple(EVAL_GRIDS), validation_phantoms=validation_phantoms,
                              n_bootstrap=n_bootstrap)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.markdown())


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
              help="the primary gain's 95% CI lower bound must exceed this")
@click.option("--tolerance", type=float, default=RetrainConfig.tolerance, show_default=True,
              help="largest drop allowed on any secondary check")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="train on a research dataset version exported with `hospital research dataset export` "
                   "instead of this platform's signed reports")
@with_appcontext
def retrain_command(out_dir: Path | None, seed: int, steps: int, margin: float, tolerance: float,
                    dataset_dir: Path | None) -> None:
    """Fine-tune a candidate on reviewed findings (this platform's signed reports, or an exported
    research dataset version); promote it only if it is better."""
    config = RetrainConfig(**{**current_app.config.get("AI_RETRAIN_CONFIG", {}),
                              "seed": seed, "steps": steps, "margin": margin, "tolerance": tolerance})
    with get_db().transaction() as session:
        try:
            version = retrain(session, Path(current_app.config["DICOM_STORAGE_DIR"]),
                              out_dir or retraining_output_dir(current_app), config, dataset_dir=dataset_dir)
        except DatasetExportError as exc:
            raise click.ClickException(str(exc)) from exc
        if version is None:
            click.echo("nothing to retrain (no active model, too few new labels, or these labels were already used)")
            return
        click.echo(f"{version.label}: {version.status.value}")
        click.echo(version.decision_reason or "")
