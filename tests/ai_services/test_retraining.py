"""The closed learning loop: signed reports' reviewed findings become labels; a candidate fine-tuned
on correct labels for a lesion kind v1 misses (hypodense liver lesions) is promoted, one fine-tuned
on corrupted labels is refused with its reason kept.

Kept small for 2 CPU cores: 96x96x6 crops of phantoms at the training spacing (1.5 mm), 60
fine-tuning steps of 64x64 patches, synthetic evaluation on 128x128x6 phantoms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.inference import PhysicalGrid
from ai_services.models import DiagnosticReport, ModelStatus, ModelVersion, ReviewStatus
from ai_services.retraining import (
    LabelBox,
    RetrainConfig,
    ReviewedMetrics,
    VersionScores,
    collect_labels,
    decide_promotion,
    inscribed_ellipse,
    is_heldout_study,
    labelled_slices,
    prepare_retraining,
    retrain,
)
from ai_services.service import (
    Box,
    active_model_version,
    add_finding,
    register_model_version,
    review_finding,
    sign_report,
)
from ai_services.training import EvaluationMetrics
from hospital.models import User
from hospital.seed import DemoSeed
from synthetic.phantoms import make_ct_phantom
from tests.ai_services.studies import store_study_with_report

CROP = 96
CROP_SLICES = 6
SPACING_MM = 1.5
# The held-out sets are tiny (about 20 synthetic lesions, a handful reviewed): one lesion moves a
# sensitivity by ~0.05 overall and ~0.1 in a size group, so margin and tolerance sit above that noise.
CONFIG = RetrainConfig(
    steps=60, batch_size=8, patch_size=64, synthetic_train_phantoms=4, synthetic_validation_phantoms=3,
    synthetic_heldout_phantoms=6, phantom_size=128, phantom_slices=6, heldout_percent=40, margin=0.0, tolerance=0.1,
    n_bootstrap=300,
)


V1_WEIGHTS = Path(__file__).resolve().parents[2] / "ai_services" / "weights" / "lesion-detector-v1.pt"


@pytest.fixture
def v1_parent(db_session: Session) -> ModelVersion:
    """The loop's tests start from an installation whose only model is v1, which misses what the
    labels teach (hypodense liver lesions); v2, the default, already finds them, so no candidate
    could show a gain from those labels. (Its candidates are version 2, as the tests were sized on:
    each cycle's synthetic seeds follow the candidate's number.)"""
    for registered in db_session.scalars(select(ModelVersion)):
        db_session.delete(registered)
    db_session.flush()
    version = register_model_version(db_session, V1_WEIGHTS, activate=True)
    db_session.commit()
    return version


def lesion_crops(kinds: tuple[str, ...], min_diameter_mm: float) -> Iterator[tuple[np.ndarray, LabelBox]]:
    """96x96x6 crops of 256x256x12 phantoms centred on one lesion of `kinds`, with its true box."""
    for seed in range(30_000, 30_400):
        phantom = make_ct_phantom(seed, n_slices=12, size=256, n_lesions=6)
        for lesion in phantom.lesions:
            if lesion.kind not in kinds or lesion.diameter_mm < min_diameter_mm:
                continue
            z, y, x = lesion.centre_zyx
            z0 = min(max(int(round(z)) - CROP_SLICES // 2, 0), 12 - CROP_SLICES)
            y0 = min(max(int(y) - CROP // 2, 0), 256 - CROP)
            x0 = min(max(int(x) - CROP // 2, 0), 256 - CROP)
            key = int(round(z)) - z0
            mask = phantom.lesion_mask[z0 + key, y0:y0 + CROP, x0:x0 + CROP]
            ys, xs = np.nonzero(mask)
            near = (np.abs(ys - (y - y0)) <= lesion.diameter_mm / SPACING_MM / 2 + 2) & (
                np.abs(xs - (x - x0)) <= lesion.diameter_mm / SPACING_MM / 2 + 2)
            if not near.any():
                continue
            box = (int(xs[near].min()), int(ys[near].min()), int(xs[near].max()) + 1, int(ys[near].max()) + 1)
            yield phantom.volume_hu[z0:z0 + CROP_SLICES, y0:y0 + CROP, x0:x0 + CROP], LabelBox(key, box)
            break


def sign_cases(
    app: Flask, session: Session, demo: DemoSeed, crops: Iterator[tuple[np.ndarray, LabelBox]],
    review: Callable[[Session, User, DiagnosticReport, LabelBox], None], *, ai_finds_truth: bool, finetune: int,
    heldout: int,
) -> None:
    """Store crops as studies and sign their reports (after `review`) until both parts are filled."""
    counts = {False: 0, True: 0}
    radiologist = demo.users["radiologist"]
    while counts[False] < finetune or counts[True] < heldout:
        volume, truth = next(crops)
        stored = store_study_with_report(app, session, demo, volume, pixel_spacing_mm=SPACING_MM,
                                         ai_boxes=[(truth.slice_index, truth.box, 0.7)] if ai_finds_truth else [])
        report = session.get(DiagnosticReport, stored.report_id)
        assert report is not None
        review(session, radiologist, report, truth)
        sign_report(session, radiologist, report.id)
        session.commit()
        counts[is_heldout_study(stored.study_instance_uid, CONFIG.heldout_percent)] += 1


def correct_labels(session: Session, user: User, report: DiagnosticReport, truth: LabelBox) -> None:
    """The radiologist adds the lesion the AI missed."""
    add_finding(session, user, report.id, truth.slice_index, Box(*truth.box))


def corrupt_labels(session: Session, user: User, report: DiagnosticReport, truth: LabelBox) -> None:
    """A bad labeller: rejects the AI's true lesion and draws a box of the same size elsewhere."""
    review_finding(session, user, report.id, report.findings[0].id, ReviewStatus.REJECTED)
    x0, y0, x1, y1 = truth.box
    shift = 40 if x0 + 40 + (x1 - x0) <= CROP else -40
    add_finding(session, user, report.id, truth.slice_index, Box(x0 + shift, y0, x1 + shift, y1))


def test_labels_come_from_signed_reports_only(app: Flask, db_session: Session, demo: DemoSeed) -> None:
    crops = lesion_crops(("hypodense",), 10.0)
    volume, truth = next(crops)
    stored = store_study_with_report(app, db_session, demo, volume, pixel_spacing_mm=SPACING_MM,
                                     ai_boxes=[(1, (5, 5, 12, 12), 0.6)])
    report = db_session.get(DiagnosticReport, stored.report_id)
    assert report is not None
    radiologist = demo.users["radiologist"]
    add_finding(db_session, radiologist, report.id, truth.slice_index, Box(*truth.box))
    review_finding(db_session, radiologist, report.id, report.findings[0].id, ReviewStatus.REJECTED)
    db_session.commit()
    storage = Path(app.config["DICOM_STORAGE_DIR"])
    assert collect_labels(db_session, storage).cases == []  # preliminary: not a label yet

    sign_report(db_session, radiologist, report.id)
    db_session.commit()
    labels = collect_labels(db_session, storage, heldout_percent=0)

    [case] = labels.cases
    assert case.positives == [truth] and case.negatives == [LabelBox(1, (5, 5, 12, 12))]
    positive = next(s for s in labels.finetune if s.mask.any())
    assert positive.hu.shape == (3, CROP, CROP)
    np.testing.assert_allclose(positive.hu[1], volume[truth.slice_index], atol=0.5)  # read from the stored file
    assert np.array_equal(positive.mask, inscribed_ellipse((CROP, CROP), truth.box))
    negative = next(s for s in labels.finetune if (8, 8) in s.focus)  # the rejected box's centre
    assert not negative.mask[5:12, 5:12].any()  # a rejected box is background
    assert collect_labels(db_session, storage, heldout_percent=100).finetune == []


def test_inscribed_ellipse_fills_its_box() -> None:
    mask = inscribed_ellipse((20, 20), (4, 6, 14, 12))
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (4, 6, 14, 12)
    assert not mask[6, 4] and mask[9, 9]  # corners out, centre in


def test_corrected_labels_teach_a_missed_lesion_kind_and_the_candidate_is_promoted(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path, v1_parent: ModelVersion
) -> None:
    parent = active_model_version(db_session)
    assert parent == v1_parent
    sign_cases(app, db_session, demo, lesion_crops(("hypodense",), 10.0), correct_labels, ai_finds_truth=False,
              finetune=8, heldout=4)

    version = retrain(db_session, Path(app.config["DICOM_STORAGE_DIR"]), tmp_path, CONFIG)
    db_session.commit()

    assert version is not None
    candidate, active = version.metrics["candidate"], version.metrics["active"]
    # v1 never finds hypodense liver lesions; after fine-tuning on the radiologists' boxes it does.
    assert active["reviewed_heldout"]["froc_sensitivity_at_4fp"] <= 0.25
    assert candidate["reviewed_heldout"]["froc_sensitivity_at_4fp"] >= active["reviewed_heldout"]["froc_sensitivity_at_4fp"] + 0.4
    assert version.status is ModelStatus.ACTIVE, (version.decision_reason, version.metrics)
    assert version.active and version.parent_version_id == parent.id
    assert version.decision_reason and version.decision_reason.startswith("promoted")
    # Calibration was re-checked on the held-out reviewed cases and is part of the record.
    calibration = version.manifest["decision"]["reviewed_calibration"]
    assert calibration["n_cases"] >= 4 and not calibration["worse"], calibration
    assert version.metrics["reviewed_calibration"] == calibration
    assert f"calibration on {calibration['n_cases']} held-out reviewed cases: ECE " in version.decision_reason
    db_session.refresh(parent)
    assert not parent.active and parent.status is ModelStatus.RETIRED
    assert active_model_version(db_session) == version
    # The periodic job's idempotency: the same labels are not trained on twice.
    assert retrain(db_session, Path(app.config["DICOM_STORAGE_DIR"]), tmp_path, CONFIG) is None


def mixed_labels(session: Session, user: User, report: DiagnosticReport, truth: LabelBox) -> None:
    """A labeller who is right on about half the studies and wrong on the rest: on a study with an
    even id the AI's true lesion is rejected and a box drawn elsewhere; otherwise it is accepted."""
    if report.study_id % 2 == 0:
        corrupt_labels(session, user, report, truth)
    else:
        review_finding(session, user, report.id, report.findings[0].id, ReviewStatus.ACCEPTED)


@pytest.mark.xfail(strict=True, reason=(
    "issue 15, open: with 10 mixed fine-tune cases and 60 steps the candidate loses no synthetic lesions "
    "beyond one lesion's granularity, so the refusal comes from the gain's CI, not from the synthetic guard"))
def test_mixed_good_and_corrupted_labels_are_refused_by_the_synthetic_guard(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path, v1_parent: ModelVersion
) -> None:
    parent = active_model_version(db_session)
    assert parent == v1_parent
    sign_cases(app, db_session, demo, lesion_crops(("solid", "cavitated", "lobulated", "hyperdense"), 10.0),
               mixed_labels, ai_finds_truth=True, finetune=10, heldout=3)
    labels = collect_labels(db_session, Path(app.config["DICOM_STORAGE_DIR"]), heldout_percent=CONFIG.heldout_percent)
    assert any(c.negatives for c in labels.cases) and any(not c.negatives for c in labels.cases)  # truly mixed

    version = retrain(db_session, Path(app.config["DICOM_STORAGE_DIR"]), tmp_path, CONFIG)
    db_session.commit()

    assert version is not None
    assert version.status is ModelStatus.REJECTED and not version.active, (version.decision_reason, version.metrics)
    # Refused because the phantoms' ground truth shows lost lesions, not merely for lack of a gain.
    assert version.decision_reason and "refused: synthetic guard: synthetic " in version.decision_reason, version.decision_reason
    decision = version.manifest["decision"]
    assert decision["synthetic_guard"] and all(" fell " in finding for finding in decision["synthetic_guard"])
    assert active_model_version(db_session) == parent
    stored = db_session.scalar(select(ModelVersion).where(ModelVersion.id == version.id))
    assert stored is not None and stored.parent_version_id == parent.id
    # Trained on these labels already: the periodic job does not train again.
    assert retrain(db_session, Path(app.config["DICOM_STORAGE_DIR"]), tmp_path, CONFIG) is None


def test_a_grid_models_candidate_is_fine_tuned_on_its_grid_and_keeps_it(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    """Retraining the default v2: its examples are read the way v2 reads a scan (1.25 mm pixels,
    neighbours 2.5 mm away), and the candidate keeps that grid and a calibration in mm^3."""
    parent = active_model_version(db_session)
    assert parent is not None and parent.manifest["preprocessing"]

    def accept(session: Session, user: User, report: DiagnosticReport, truth: LabelBox) -> None:
        review_finding(session, user, report.id, report.findings[0].id, ReviewStatus.ACCEPTED)

    sign_cases(app, db_session, demo, lesion_crops(("solid", "cavitated"), 10.0), accept, ai_finds_truth=True,
               finetune=4, heldout=2)
    labels = collect_labels(db_session, Path(app.config["DICOM_STORAGE_DIR"]), heldout_percent=CONFIG.heldout_percent)
    grid = PhysicalGrid.from_json(parent.manifest["preprocessing"])
    assert grid is not None
    case = next(c for c in labels.cases if not c.heldout)
    [example] = labelled_slices(case, grid)
    side = round(CROP * SPACING_MM / grid.in_plane_mm)
    assert example.hu.shape == (3, side, side) and example.mask.shape == (side, side) and example.mask.any()

    version = retrain(db_session, Path(app.config["DICOM_STORAGE_DIR"]), tmp_path, CONFIG)
    db_session.commit()
    assert version is not None and version.parent_version_id == parent.id
    assert version.manifest["preprocessing"] == parent.manifest["preprocessing"]
    assert version.manifest["calibration"]["size_unit"] == "mm3"
    assert version.decision_reason and version.decision_reason.split(":")[0] in ("promoted", "refused")


def test_promotion_rule_needs_a_gain_and_no_drop_beyond_tolerance() -> None:
    def scores(synthetic: float, small: float, reviewed: float, n_small: int = 20) -> VersionScores:
        metrics = EvaluationMetrics(6, 20, synthetic, synthetic, synthetic, 1.0, 0.9, 0.1,
                                    sensitivity_by_size_at_4fp={"<6mm": small, ">10mm": synthetic},
                                    lesions_by_size={"<6mm": n_small, ">10mm": 20})
        return VersionScores(metrics, ReviewedMetrics(4, 4, reviewed, reviewed, 1.0, {">10mm": reviewed}))

    active = scores(0.6, 0.3, 0.0)
    assert decide_promotion(scores(0.6, 0.3, 0.75), active, margin=0.02, tolerance=0.05).promote
    no_gain = decide_promotion(scores(0.61, 0.3, 0.0), active, margin=0.02, tolerance=0.05)
    assert not no_gain.promote and "the CI's lower bound is not above 0.02" in no_gain.reason
    small_worse = decide_promotion(scores(0.6, 0.1, 0.75), active, margin=0.02, tolerance=0.05)
    assert not small_worse.promote and small_worse.guard_failures == ("synthetic <6mm fell 0.300 -> 0.100",)
    assert small_worse.reason.startswith("refused: synthetic guard: synthetic <6mm fell 0.300 -> 0.100")
    # A group of 5 lesions moves 0.2 per lesion: under a 0.05 tolerance it is noise, not checked.
    few = decide_promotion(scores(0.6, 0.1, 0.75, n_small=5), scores(0.6, 0.3, 0.0, n_small=5), margin=0.02, tolerance=0.05)
    assert few.promote and few.guard_failures == ()


def test_each_promotion_cycle_gets_fresh_heldout_seeds() -> None:
    from ai_services.retraining import cycle_seeds
    from ai_services.training import HELDOUT_SEED_BASE
    v2_validation, v2_heldout = cycle_seeds("2", 8, 12)
    v3_validation, v3_heldout = cycle_seeds("3", 8, 12)
    seeds = [set(r) for r in (v2_validation, v2_heldout, v3_validation, v3_heldout)]
    assert all(a.isdisjoint(b) for i, a in enumerate(seeds) for b in seeds[i + 1:])
    assert all(s.isdisjoint(range(0, HELDOUT_SEED_BASE + 10_000)) for s in seeds)  # not v1's train/val/test


def test_the_gain_interval_is_a_paired_bootstrap_over_heldout_units() -> None:
    from ai_services.retraining import UnitOutcome, gain_confidence_interval
    metrics = EvaluationMetrics(4, 4, 0.5, 0.5, 0.5, 1.0, 0.9, 0.1)
    found, missed = UnitOutcome((0.9,), (0,), 1), UnitOutcome((0.9,), (-1,), 1)
    better = VersionScores(metrics, None, [found] * 4)
    mixed = VersionScores(metrics, None, [found, missed, found, missed])
    low, high = gain_confidence_interval(better, mixed, n_bootstrap=300)
    assert 0.0 <= low <= 0.5 <= high <= 1.0  # one resample may draw only the two shared hits


def test_retraining_without_an_active_model_is_skipped_not_failed(db_session: Session, app: Flask, tmp_path: Path) -> None:
    """A fresh installation's scheduler runs retraining before any model is registered."""
    for version in db_session.scalars(select(ModelVersion)):
        version.active = False
    db_session.flush()
    assert prepare_retraining(db_session, tmp_path, RetrainConfig()) is None


def test_calibration_on_heldout_reviewed_cases_refuses_a_candidate_worse_beyond_its_ci() -> None:
    """A candidate that finds more of the reviewed lesions (a clear gain) but says 0.95 for every
    detection, most of them places the radiologists did not keep, is refused for its calibration;
    the same gain with honest confidences is promoted, and the record names both ECEs."""
    from ai_services.retraining import UnitOutcome
    metrics = EvaluationMetrics(6, 20, 0.6, 0.6, 0.6, 1.0, 0.9, 0.1)
    reviewed = ReviewedMetrics(12, 12, 0.5, 0.5, 1.0)
    found_honest = UnitOutcome((0.8, 0.2, 0.1), (0, -1, -1), 1)
    missed_honest = UnitOutcome((0.15,), (-1,), 1)
    active = VersionScores(metrics, reviewed, [UnitOutcome((0.9,), (0,), 1)] * 6, [found_honest, missed_honest] * 6)
    better = ReviewedMetrics(12, 12, 0.9, 0.9, 1.0)
    overconfident = VersionScores(metrics, better, active.synthetic_units,
                                  [UnitOutcome((0.95, 0.95, 0.95), (0, -1, -1), 1)] * 12)
    honest = VersionScores(metrics, better, active.synthetic_units, [found_honest] * 12)

    refused = decide_promotion(overconfident, active, margin=0.0, tolerance=0.05, n_bootstrap=300)
    assert not refused.promote and refused.calibration is not None and refused.calibration.worse
    assert refused.calibration.candidate_ece > 0.5 and refused.calibration.active_ece < 0.2
    assert refused.reason.startswith("refused: calibration on 12 held-out reviewed cases: ECE ")
    assert "worse beyond its CI" in refused.reason and refused.guard_failures == ()

    promoted = decide_promotion(honest, active, margin=0.0, tolerance=0.05, n_bootstrap=300)
    assert promoted.promote, promoted.reason
    assert promoted.calibration is not None and not promoted.calibration.worse
    assert "calibration on 12 held-out reviewed cases: ECE" in promoted.reason
    low, high = promoted.calibration.candidate_ci95
    assert low <= promoted.calibration.candidate_ece <= high
    assert promoted.calibration.to_json()["worse"] is False
