"""Evaluation on the second generator: statistics on hand-made outcomes, and a tiny real run.

The real runs use 128 x 128 scans at 2.8 mm and a handful of bootstrap resamples so each test takes
seconds on CPU; the clinical grids are what `hospital ai evaluate` runs by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flask import Flask

from ai_services.evaluation import (
    EVAL_TEST_SEED_BASE,
    FROC_FP_RATES,
    EvalCase,
    EvaluationError,
    ScanOutcome,
    bootstrap_ci,
    by_group,
    evaluate_on_second_generator,
    evaluation_cases,
    froc_sensitivities,
    study_auroc,
    summarise_grid,
)
from ai_services.inference import LesionDetector
from ai_services.training import VALIDATION_SEED_BASE
from synthetic.eval_phantoms import EvalGrid, EvalLesion, EvalScan, make_eval_scan

WEIGHTS = Path(__file__).resolve().parents[2] / "ai_services" / "weights" / "lesion-detector-v1.pt"
SMALL = EvalGrid("small", 128, 2.8, 5.0, 12)


def _lesion(diameter: float = 8.0, kind: str = "solid", region: str = "lung") -> EvalLesion:
    return EvalLesion((1.0, 10.0, 10.0), diameter, kind, region, "sphere", (diameter / 2,) * 3, 40.0)


def _outcome(grid: str, lesions: list[EvalLesion], detections: list[tuple[float, int]], seed: int = 0) -> ScanOutcome:
    conf = np.array([c for c, _ in detections], dtype=np.float64)
    hits = np.array([h for _, h in detections], dtype=np.int64)
    return ScanOutcome(EvalCase(seed, grid, not lesions), conf, hits, lesions)


def _hand_made() -> list[ScanOutcome]:
    return [
        _outcome("g", [_lesion(5.0), _lesion(20.0, "hypodense", "liver")], [(0.9, 1), (0.6, -1), (0.3, 0)]),
        _outcome("g", [_lesion(8.0)], [(0.8, 0), (0.7, -1)]),
        _outcome("g", [], [(0.5, -1)]),
        _outcome("g", [], []),
    ]


def test_froc_at_the_standard_rates_on_hand_made_scans() -> None:
    froc = froc_sensitivities(_hand_made())
    assert list(froc) == list(FROC_FP_RATES)
    # 3 lesions, 4 scans: 2 found before any FP; the 3rd after 3 FPs (0.75 FP/scan).
    assert froc[0.125] == pytest.approx(2 / 3) and froc[0.5] == pytest.approx(2 / 3)
    assert froc[1.0] == pytest.approx(1.0) and froc[8.0] == pytest.approx(1.0)


def test_study_auroc_scores_a_scan_by_its_most_confident_finding() -> None:
    # Lesion scans score 0.9 and 0.8, lesion-free 0.5 and 0 (no finding): perfectly separated.
    assert study_auroc(_hand_made()) == 1.0
    assert math.isnan(study_auroc(_hand_made()[:2]))  # one class only: undefined, not 0.5


def test_bootstrap_resamples_scans_within_strata_and_brackets_the_estimate() -> None:
    outcomes = _hand_made() * 3
    ci = bootstrap_ci(outcomes, study_auroc, n_bootstrap=200)
    assert ci == (1.0, 1.0)  # every replicate keeps both classes (stratified), so AUROC is defined
    noisy = [*outcomes, _outcome("g", [_lesion()], [(0.1, -1)]), _outcome("g", [], [(0.95, -1)])]
    low, high = bootstrap_ci(noisy, study_auroc, n_bootstrap=200) or (0.0, 0.0)
    assert low < study_auroc(noisy) < high <= 1.0
    assert bootstrap_ci(outcomes[:1], study_auroc, n_bootstrap=50) is None


def test_summary_and_groups_at_a_fixed_threshold() -> None:
    result = summarise_grid("g", _hand_made(), threshold=0.55, n_bootstrap=50)
    assert result.n_scans == 4 and result.n_lesion_free == 2 and result.n_lesions == 3
    assert result.sensitivity_at_operating_point.value == pytest.approx(2 / 3)  # the 0.3 hit is below
    assert result.false_positives_per_scan.value == pytest.approx(2 / 4)  # the 0.6 and 0.7 FPs
    assert result.false_positives_per_lesion_free_scan.value == 0.0  # the 0.5 FP is below threshold
    assert result.max_confidence_lesion_free == 0.5
    # Every candidate's confidence against "it hit a lesion", one per bin here: |1-0.9|, |0-0.6|,
    # |1-0.3|, |1-0.8|, |0-0.7|, |0-0.5| averaged.
    assert result.ece is not None and result.ece.value == pytest.approx(2.8 / 6)
    assert result.ece.ci95 is not None and result.ece.ci95[0] <= result.ece.value <= result.ece.ci95[1]
    groups = by_group(_hand_made(), threshold=0.55, n_bootstrap=20)
    assert [(g.group, g.n_lesions, g.found) for g in groups["size"]] == [("5 mm", 1, 0), ("8 mm", 1, 1), ("20 mm", 1, 1)]
    assert {g.group: g.found for g in groups["region:kind"]} == {"liver:hypodense": 1, "lung:solid": 1}
    assert set(groups) == {"size", "kind", "region", "region:kind", "grid"}


def test_test_cases_use_their_own_seeds_per_grid_and_include_lesion_free_scans() -> None:
    cases = evaluation_cases(scans_with_lesions=2, lesion_free_scans=1)
    assert len(cases) == 6 and sum(c.lesion_free for c in cases) == 2
    assert min(c.seed for c in cases) >= EVAL_TEST_SEED_BASE > VALIDATION_SEED_BASE + 1000
    assert len({c.seed for c in cases}) == 6
    with pytest.raises(EvaluationError):
        evaluation_cases(scans_with_lesions=1, lesion_free_scans=0, grids=("256@1.5mm",))


def _small_scan(case: EvalCase) -> EvalScan:
    return make_eval_scan(case.seed, SMALL, n_lesions=0 if case.lesion_free else None)


def test_the_operating_threshold_comes_from_validation_seeds_never_from_test_scans() -> None:
    detector = LesionDetector.load(WEIGHTS)
    validation = [VALIDATION_SEED_BASE]
    cases = [EvalCase(EVAL_TEST_SEED_BASE, "small", False), EvalCase(EVAL_TEST_SEED_BASE + 500, "small", True)]
    report = evaluate_on_second_generator(detector, model="v1", cases=cases, validation_seeds=validation,
                                          n_bootstrap=10, make_scan=_small_scan)
    other = evaluate_on_second_generator(detector, model="v1", cases=cases[:1], validation_seeds=validation,
                                         n_bootstrap=10, make_scan=_small_scan)
    # Same validation seeds, different test scans: the same threshold.
    assert report.operating_threshold == other.operating_threshold
    assert "validation phantoms of the training generator" in report.threshold_source
    text = report.markdown()
    assert "evaluation-only generator" in text and "FROC sensitivity at 0.125 FP/scan" in text
    assert "study-level AUROC" in text and "| size " in text
    with pytest.raises(EvaluationError):
        evaluate_on_second_generator(detector, model="v1", cases=cases, validation_seeds=[EVAL_TEST_SEED_BASE],
                                     n_bootstrap=10, make_scan=_small_scan)


def test_hospital_ai_evaluate_prints_the_table_by_default(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=[
        "ai", "evaluate", str(WEIGHTS), "--grid", "512@0.7mm/5mm", "--scans-with-lesions", "1",
        "--lesion-free-scans", "1", "--bootstrap", "5", "--validation-phantoms", "1"])
    assert result.exit_code == 0, result.output
    assert "| FROC sensitivity at 1 FP/scan |" in result.output
    assert "| scans (with lesions / lesion-free), lesions | 1 / 1, " in result.output


def test_vectorised_froc_agrees_with_the_training_froc_curve() -> None:
    from ai_services.training import froc_curve, sensitivity_at_fp_rate
    rng = np.random.default_rng(5)
    outcomes = []
    for scan in range(8):
        n = int(rng.integers(0, 4))
        hits = rng.integers(-1, max(n, 1), size=12) if n else np.full(12, -1)
        outcomes.append(ScanOutcome(EvalCase(scan, "g", n == 0), np.round(rng.random(12), 1), hits, [_lesion()] * n))
    conf = np.concatenate([o.confidences for o in outcomes])
    ids = np.concatenate([np.where(o.hits >= 0, p * 1000 + o.hits, -1) for p, o in enumerate(outcomes)])
    points = froc_curve(conf, ids, sum(len(o.lesions) for o in outcomes), len(outcomes))
    for rate, value in froc_sensitivities(outcomes).items():
        assert value == pytest.approx(sensitivity_at_fp_rate(points, rate)[0])
