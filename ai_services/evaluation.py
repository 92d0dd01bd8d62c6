"""Evaluation that cannot flatter: the model is scored on scans from the second, independently
designed generator (``synthetic.eval_phantoms``), which nothing else in the project may use.

What is fixed before the test scans are looked at:

- the operating threshold: the lowest confidence that keeps at most ``OPERATING_FP_PER_SCAN``
  false positives per scan on the *validation* phantoms of the training generator (the same seeds
  the calibration was fitted on, ``training.VALIDATION_SEED_BASE``..), never on test scans;
- the test seeds: ``EVAL_TEST_SEED_BASE``.. of the evaluation generator, disjoint from every seed
  range used for training, calibration or retraining.

Reported on the test scans: lesion-level FROC (sensitivity at 1/8 .. 8 false positives per scan,
threshold-free), sensitivity and false positives per scan at the operating threshold, false
positives and the highest confidence on the lesion-free scans, study-level AUROC (study score =
the highest finding confidence, 0 without findings), each with a 95% bootstrap confidence interval
from resampling scans (stratified: scans with lesions and lesion-free scans are resampled
separately, so every replicate has both), and sensitivity at the operating threshold by lesion
size, kind, region and grid. The hit rule is ``training.match_detections``.

Pure (arrays and dataclasses in and out, no Flask, no session): ``hospital ai evaluate`` prints
``EvaluationReport.markdown()``, and the README's table is that output pasted verbatim.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_services.inference import LesionDetector
from ai_services.training import (
    VALIDATION_SEED_BASE,
    TrainingError,
    auroc,
    expected_calibration_error,
    froc_curve,
    make_eval_phantom,
    match_detections,
    sensitivity_at_fp_rate,
)
from synthetic.eval_phantoms import EVAL_GRIDS, EvalLesion, make_eval_scan
from synthetic.phantoms import Phantom

logger = logging.getLogger(__name__)

# Far from the training generator's seed blocks (0..9 999 training, 10 000.. validation, 15 000..
# retraining validation, 20 000.. held-out, 30 000.. test crops, 100 000.. retraining cycles).
EVAL_TEST_SEED_BASE = 50_000
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
OPERATING_FP_PER_SCAN = 1.0
DEFAULT_VALIDATION_PHANTOMS = 16
# `hospital ai evaluate`'s defaults: per grid, about a minute on two CPU cores. The intervals are
# wide at these counts and say so; raise them for narrower ones.
DEFAULT_SCANS_WITH_LESIONS = 4
DEFAULT_LESION_FREE_SCANS = 2
DEFAULT_BOOTSTRAP = 500


class EvaluationError(ValueError):
    """An evaluation request that cannot give meaningful numbers."""


@dataclass(frozen=True)
class EvalCase:
    seed: int
    grid: str
    lesion_free: bool


@dataclass
class ScanOutcome:
    """One test scan: each detection's confidence and the lesion it hits (-1: false positive)."""

    case: EvalCase
    confidences: np.ndarray
    hits: np.ndarray
    lesions: list[EvalLesion]

    @property
    def study_score(self) -> float:
        return float(self.confidences.max()) if self.confidences.size else 0.0


@dataclass(frozen=True)
class Estimate:
    value: float
    ci95: tuple[float, float] | None

    def text(self, digits: int = 2) -> str:
        if math.isnan(self.value):
            return "n/a"
        if self.ci95 is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} ({self.ci95[0]:.{digits}f}-{self.ci95[1]:.{digits}f})"

    def to_json(self) -> dict[str, Any]:
        return {"value": round(self.value, 4), "ci95": [round(v, 4) for v in self.ci95] if self.ci95 else None}


@dataclass(frozen=True)
class GroupResult:
    group: str
    n_lesions: int
    found: int
    sensitivity: Estimate


@dataclass
class GridResult:
    grid: str
    n_scans: int
    n_lesion_free: int
    n_lesions: int
    froc: dict[float, Estimate]
    sensitivity_at_operating_point: Estimate
    false_positives_per_scan: Estimate
    false_positives_per_lesion_free_scan: Estimate
    max_confidence_lesion_free: float
    study_auroc: Estimate
    ece: Estimate | None = None  # of every candidate's confidence against "it hit a lesion"


@dataclass
class EvaluationReport:
    model: str
    generator: str
    operating_threshold: float
    threshold_source: str
    n_bootstrap: int
    per_grid: list[GridResult]
    overall: GridResult
    by_group: dict[str, list[GroupResult]] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        def grid_json(g: GridResult) -> dict[str, Any]:
            return {"grid": g.grid, "n_scans": g.n_scans, "n_lesion_free": g.n_lesion_free, "n_lesions": g.n_lesions,
                    "froc": {str(k): v.to_json() for k, v in g.froc.items()},
                    "sensitivity_at_operating_point": g.sensitivity_at_operating_point.to_json(),
                    "false_positives_per_scan": g.false_positives_per_scan.to_json(),
                    "false_positives_per_lesion_free_scan": g.false_positives_per_lesion_free_scan.to_json(),
                    "max_confidence_lesion_free": round(g.max_confidence_lesion_free, 4),
                    "study_auroc": g.study_auroc.to_json(), "ece": g.ece.to_json() if g.ece else None}
        return {"model": self.model, "generator": self.generator, "operating_threshold": round(self.operating_threshold, 4),
                "threshold_source": self.threshold_source, "n_bootstrap": self.n_bootstrap,
                "overall": grid_json(self.overall), "per_grid": [grid_json(g) for g in self.per_grid],
                "by_group": {k: [{"group": r.group, "n_lesions": r.n_lesions, "found": r.found,
                                  "sensitivity": r.sensitivity.to_json()} for r in v] for k, v in self.by_group.items()}}

    def markdown(self) -> str:
        """The report as Markdown: the same text the README quotes."""
        grids = [*self.per_grid, self.overall] if len(self.per_grid) > 1 else self.per_grid
        lines = [
            f"Model `{self.model}` on the evaluation-only generator `{self.generator}` "
            f"({self.overall.n_scans} scans: {self.overall.n_scans - self.overall.n_lesion_free} with "
            f"{self.overall.n_lesions} lesions, {self.overall.n_lesion_free} lesion-free with bone). "
            f"Operating threshold {self.operating_threshold:.3f}, {self.threshold_source}. "
            f"95% CIs: {self.n_bootstrap} bootstrap resamples of scans.",
            "",
            "| metric | " + " | ".join(g.grid for g in grids) + " |",
            "|---|" + "---|" * len(grids),
            "| scans (with lesions / lesion-free), lesions | " + " | ".join(
                f"{g.n_scans - g.n_lesion_free} / {g.n_lesion_free}, {g.n_lesions}" for g in grids) + " |",
        ]
        for rate in FROC_FP_RATES:
            lines.append(f"| FROC sensitivity at {rate:g} FP/scan | " + " | ".join(g.froc[rate].text() for g in grids) + " |")
        lines += [
            "| sensitivity at the operating threshold | " + " | ".join(g.sensitivity_at_operating_point.text() for g in grids) + " |",
            "| false positives per scan at the operating threshold | " + " | ".join(g.false_positives_per_scan.text(1) for g in grids) + " |",
            "| false positives per lesion-free scan at the operating threshold | " + " | ".join(
                g.false_positives_per_lesion_free_scan.text(1) for g in grids) + " |",
            "| highest confidence on a lesion-free scan | " + " | ".join(f"{g.max_confidence_lesion_free:.2f}" for g in grids) + " |",
            "| study-level AUROC (score: highest confidence) | " + " | ".join(g.study_auroc.text() for g in grids) + " |",
            "| calibration error of the confidences (ECE, 10 bins, all candidates) | " + " | ".join(
                g.ece.text() if g.ece else "n/a" for g in grids) + " |",
            "",
            "Sensitivity at the operating threshold by group (found / lesions, 95% CI):",
            "",
            "| group | lesions | found | sensitivity |",
            "|---|---|---|---|",
        ]
        for key, rows in self.by_group.items():
            for row in rows:
                lines.append(f"| {key} {row.group} | {row.n_lesions} | {row.found} | {row.sensitivity.text()} |")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Cases and runs
# ---------------------------------------------------------------------------------------------

def evaluation_cases(*, scans_with_lesions: int, lesion_free_scans: int, grids: Sequence[str] = tuple(EVAL_GRIDS),
               seed_base: int = EVAL_TEST_SEED_BASE) -> list[EvalCase]:
    """The test cases: per grid, ``scans_with_lesions`` then ``lesion_free_scans`` consecutive seeds.

    Each grid gets its own seeds, so the grids are not the same bodies resampled.
    """
    unknown = [g for g in grids if g not in EVAL_GRIDS]
    if unknown:
        raise EvaluationError(f"unknown grid(s) {unknown}; known: {sorted(EVAL_GRIDS)}")
    if scans_with_lesions < 1:
        raise EvaluationError(f"need at least one scan with lesions, got {scans_with_lesions}")
    cases = []
    for g, grid in enumerate(grids):
        base = seed_base + 1000 * g
        cases += [EvalCase(base + k, grid, False) for k in range(scans_with_lesions)]
        cases += [EvalCase(base + 500 + k, grid, True) for k in range(lesion_free_scans)]
    return cases


def run_cases(detector: LesionDetector, cases: Sequence[EvalCase],
              make_scan: Callable[[EvalCase], Any] | None = None) -> list[ScanOutcome]:
    """Generate each case's scan, detect at the detector's candidate threshold, match to the truth."""
    make = make_scan or (lambda case: make_eval_scan(case.seed, case.grid, n_lesions=0 if case.lesion_free else None))
    outcomes = []
    for case in cases:
        scan = make(case)
        detections = detector.detect(scan.volume_hu.astype(np.float32), scan.pixel_spacing_mm,
                                     slice_spacing_mm=scan.slice_thickness_mm)
        hits = match_detections(detections, scan)
        outcomes.append(ScanOutcome(case, np.array([d.confidence for d in detections], dtype=np.float64),
                                    np.array(hits, dtype=np.int64), list(scan.lesions)))
        logger.info("eval %s seed %d: %d lesions, %d detections, %d hit", case.grid, case.seed, len(scan.lesions),
                    len(detections), len({h for h in hits if h >= 0}))
    return outcomes


def validation_phantom_maker(detector: LesionDetector) -> Callable[[int], Phantom]:
    """The training generator's validation scans for this model: v1's single grid, or for a model
    on a physical grid the clinical-grid validation scans its calibration was fitted on."""
    if detector.grid is None:
        return make_eval_phantom
    from ai_services.training_clinical import validation_scan
    return validation_scan


def operating_threshold(detector: LesionDetector, validation_seeds: Sequence[int],
                        fp_per_scan: float = OPERATING_FP_PER_SCAN) -> float:
    """The lowest threshold with at most ``fp_per_scan`` false positives per scan on the training
    generator's validation phantoms (never on test scans)."""
    if not validation_seeds:
        raise EvaluationError("the operating threshold needs validation seeds")
    confidences: list[float] = []
    ids: list[int] = []
    n_lesions = 0
    make_phantom = validation_phantom_maker(detector)
    for scan, seed in enumerate(validation_seeds):
        phantom = make_phantom(seed)
        detections = detector.detect(phantom.volume_hu.astype(np.float32), phantom.pixel_spacing_mm,
                                     slice_spacing_mm=phantom.slice_thickness_mm)
        for det, hit in zip(detections, match_detections(detections, phantom), strict=True):
            confidences.append(det.confidence)
            ids.append(scan * 1000 + hit if hit >= 0 else -1)
        n_lesions += len(phantom.lesions)
    _, threshold = sensitivity_at_fp_rate(froc_curve(confidences, ids, max(n_lesions, 1), len(validation_seeds)), fp_per_scan)
    return float(min(threshold, 1.0 + 1e-9)) if math.isfinite(threshold) else 1.0 + 1e-9


# ---------------------------------------------------------------------------------------------
# Statistics on a set of scans (pure; the bootstrap calls them on resampled index arrays)
# ---------------------------------------------------------------------------------------------

def froc_sensitivities(outcomes: Sequence[ScanOutcome], rates: Sequence[float] = FROC_FP_RATES) -> dict[float, float]:
    """Lesion-level FROC sensitivity at each rate; a repeated scan counts as another scan.

    Same operating points as ``training.froc_curve`` (one per distinct confidence, repeats on a
    lesion ignored), vectorised because the bootstrap calls it thousands of times.
    """
    n_lesions = sum(len(o.lesions) for o in outcomes)
    if n_lesions == 0 or not outcomes:
        return {rate: math.nan for rate in rates}
    conf = np.concatenate([o.confidences for o in outcomes])
    ids = np.concatenate([np.where(o.hits >= 0, p * 1000 + o.hits, -1) for p, o in enumerate(outcomes)])
    order = np.argsort(-conf, kind="mergesort")
    conf, ids = conf[order], ids[order]
    first = np.zeros(ids.size, dtype=bool)
    positive = np.flatnonzero(ids >= 0)
    _, first_index = np.unique(ids[positive], return_index=True)
    first[positive[first_index]] = True
    last_of_tie = np.r_[conf[1:] != conf[:-1], True] if conf.size else np.zeros(0, dtype=bool)
    fp_rate = np.r_[0.0, np.cumsum(ids < 0)[last_of_tie] / len(outcomes)]
    sensitivity = np.r_[0.0, np.cumsum(first)[last_of_tie] / n_lesions]
    return {rate: float(sensitivity[np.searchsorted(fp_rate, rate, side="right") - 1]) for rate in rates}


def lesions_found(outcome: ScanOutcome, threshold: float) -> set[int]:
    return {int(h) for c, h in zip(outcome.confidences, outcome.hits, strict=True) if h >= 0 and c >= threshold}


def false_positives(outcome: ScanOutcome, threshold: float) -> int:
    return int(((outcome.hits < 0) & (outcome.confidences >= threshold)).sum())


def study_auroc(outcomes: Sequence[ScanOutcome]) -> float:
    labels = [bool(o.lesions) for o in outcomes]
    if all(labels) or not any(labels):
        return math.nan
    return auroc([o.study_score for o in outcomes], labels)


def resample_scans(outcomes: Sequence[ScanOutcome], n_bootstrap: int, seed: int = 0) -> list[np.ndarray]:
    """Index arrays of scans drawn with replacement, stratified by whether a scan has lesions
    (so every replicate keeps both kinds of scan in their proportions)."""
    rng = np.random.default_rng([seed, 95])
    strata = [np.array([i for i, o in enumerate(outcomes) if o.lesions], dtype=np.int64),
              np.array([i for i, o in enumerate(outcomes) if not o.lesions], dtype=np.int64)]
    return [np.concatenate([rng.choice(stratum, size=stratum.size) for stratum in strata if stratum.size])
            for _ in range(n_bootstrap)]


def percentile_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float] | None:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_ci(outcomes: Sequence[ScanOutcome], statistic: Callable[[list[ScanOutcome]], float], *,
                 n_bootstrap: int, seed: int = 0) -> tuple[float, float] | None:
    """Percentile 95% CI of ``statistic`` over resampled scans (``resample_scans``). None when
    fewer than two scans or no replicate is defined."""
    if n_bootstrap < 1 or len(outcomes) < 2:
        return None
    return percentile_ci([statistic([outcomes[i] for i in idx]) for idx in resample_scans(outcomes, n_bootstrap, seed)])


def _ratio(numerator: np.ndarray, denominator: np.ndarray, samples: list[np.ndarray]) -> list[float]:
    return [float(numerator[idx].sum() / denominator[idx].sum()) if denominator[idx].sum() else math.nan
            for idx in samples]


def _size_name(diameter_mm: float) -> str:
    return f"{diameter_mm:.0f} mm"


def summarise_grid(name: str, outcomes: Sequence[ScanOutcome], threshold: float, n_bootstrap: int) -> GridResult:
    samples = resample_scans(outcomes, n_bootstrap) if len(outcomes) >= 2 else []
    found = np.array([len(lesions_found(o, threshold)) for o in outcomes], dtype=np.float64)
    total = np.array([len(o.lesions) for o in outcomes], dtype=np.float64)
    fps = np.array([false_positives(o, threshold) for o in outcomes], dtype=np.float64)
    ones = np.ones(len(outcomes))

    def estimate(value: float, replicates: list[float]) -> Estimate:
        return Estimate(value, percentile_ci(replicates) if samples else None)

    froc_point = froc_sensitivities(outcomes)
    froc_reps = [froc_sensitivities([outcomes[i] for i in idx]) for idx in samples]
    froc = {rate: estimate(value, [r[rate] for r in froc_reps]) for rate, value in froc_point.items()}
    lesion_free = [o for o in outcomes if not o.lesions]
    free_fps = np.array([false_positives(o, threshold) for o in lesion_free], dtype=np.float64)
    free_samples = resample_scans(lesion_free, n_bootstrap) if len(lesion_free) >= 2 else []
    return GridResult(
        grid=name, n_scans=len(outcomes), n_lesion_free=len(lesion_free), n_lesions=int(total.sum()),
        froc=froc,
        sensitivity_at_operating_point=estimate(float(found.sum() / total.sum()) if total.sum() else math.nan,
                                                _ratio(found, total, samples)),
        false_positives_per_scan=estimate(float(fps.mean()), _ratio(fps, ones, samples)),
        false_positives_per_lesion_free_scan=Estimate(
            float(free_fps.mean()) if lesion_free else math.nan,
            percentile_ci(_ratio(free_fps, np.ones(len(lesion_free)), free_samples)) if free_samples else None),
        max_confidence_lesion_free=max((o.study_score for o in lesion_free), default=math.nan),
        study_auroc=estimate(study_auroc(outcomes), [study_auroc([outcomes[i] for i in idx]) for idx in samples]),
        ece=estimate(calibration_error(outcomes), [calibration_error([outcomes[i] for i in idx]) for idx in samples]),
    )


def calibration_error(outcomes: Sequence[ScanOutcome]) -> float:
    """ECE (10 bins) of every detection's confidence against whether it hit a lesion."""
    if not outcomes:
        return math.nan
    confidences = np.concatenate([o.confidences for o in outcomes])
    return expected_calibration_error(confidences, np.concatenate([o.hits >= 0 for o in outcomes])) \
        if confidences.size else math.nan


def by_group(outcomes: Sequence[ScanOutcome], threshold: float, n_bootstrap: int) -> dict[str, list[GroupResult]]:
    """Sensitivity at ``threshold`` by lesion size, kind, region and grid, CIs over scans."""
    keys: dict[str, Callable[[ScanOutcome, EvalLesion], str]] = {
        "size": lambda o, lesion: _size_name(lesion.diameter_mm),
        "kind": lambda o, lesion: lesion.kind,
        "region": lambda o, lesion: lesion.region,
        "region:kind": lambda o, lesion: f"{lesion.region}:{lesion.kind}",
        "grid": lambda o, lesion: o.case.grid,
    }
    samples = resample_scans(outcomes, n_bootstrap) if len(outcomes) >= 2 else []
    hit_sets = [lesions_found(o, threshold) for o in outcomes]
    out: dict[str, list[GroupResult]] = {}
    for key, of in keys.items():
        groups = sorted({of(o, lesion) for o in outcomes for lesion in o.lesions},
                        key=lambda g: (float(g.split()[0]) if key == "size" else 0.0, g))
        rows = []
        for group in groups:
            total = np.array([sum(of(o, lesion) == group for lesion in o.lesions) for o in outcomes], dtype=np.float64)
            found = np.array([sum(of(o, lesion) == group and i in hits for i, lesion in enumerate(o.lesions))
                              for o, hits in zip(outcomes, hit_sets, strict=True)], dtype=np.float64)
            ci = percentile_ci(_ratio(found, total, samples)) if samples else None
            rows.append(GroupResult(group, int(total.sum()), int(found.sum()), Estimate(float(found.sum() / total.sum()), ci)))
        out[key] = rows
    return out


def evaluate_on_second_generator(
    detector: LesionDetector, *, model: str, cases: Sequence[EvalCase], validation_seeds: Sequence[int],
    n_bootstrap: int = 1000, make_scan: Callable[[EvalCase], Any] | None = None,
) -> EvaluationReport:
    """The whole evaluation of the module docstring."""
    started = time.perf_counter()
    overlap = [s for s in validation_seeds if s >= EVAL_TEST_SEED_BASE]
    if overlap:
        raise EvaluationError(f"validation seeds {overlap[:3]} fall in the test seed range")
    if "report_threshold" in detector.manifest:
        # The model's own operating point (what the product reports), fixed on validation scans at training.
        threshold = detector.report_threshold
        source = f"the model's report threshold: {detector.manifest.get('report_threshold_rule', 'from its manifest')}"
    else:
        threshold = operating_threshold(detector, validation_seeds)
        source = (f"the lowest with <= {OPERATING_FP_PER_SCAN:g} FP/scan on {len(validation_seeds)} validation phantoms "
                  f"of the training generator (seeds {validation_seeds[0]}..{validation_seeds[-1]})")
    outcomes = run_cases(detector, cases, make_scan)
    grids = sorted({o.case.grid for o in outcomes}, key=lambda g: list(EVAL_GRIDS).index(g) if g in EVAL_GRIDS else 99)
    per_grid = [summarise_grid(g, [o for o in outcomes if o.case.grid == g], threshold, n_bootstrap) for g in grids]
    overall = summarise_grid("all grids", outcomes, threshold, n_bootstrap) if len(grids) > 1 else per_grid[0]
    return EvaluationReport(model=model, generator="synthetic.eval_phantoms.make_eval_scan", operating_threshold=threshold,
                            threshold_source=source, n_bootstrap=n_bootstrap, per_grid=per_grid, overall=overall,
                            by_group=by_group(outcomes, threshold, n_bootstrap), wall_time_s=time.perf_counter() - started)


def evaluate_weights(weights_path: Path, *, scans_with_lesions: int, lesion_free_scans: int,
                     grids: Sequence[str] = tuple(EVAL_GRIDS), validation_phantoms: int = DEFAULT_VALIDATION_PHANTOMS,
                     n_bootstrap: int = 1000) -> EvaluationReport:
    """Load verified weights and evaluate them (``hospital ai evaluate``)."""
    detector = LesionDetector.load(weights_path)
    label = f"{detector.manifest.get('model_name', Path(weights_path).stem)} v{detector.manifest.get('version', '?')}"
    # Calibration was fitted on the manifest's validation seeds; the threshold is read off the same ones.
    training_data = detector.manifest.get("training_data")
    recorded = training_data.get("validation_seeds") if isinstance(training_data, dict) else None
    first = int(recorded[0]) if isinstance(recorded, list) and recorded else VALIDATION_SEED_BASE
    if first >= EVAL_TEST_SEED_BASE:
        raise TrainingError(f"the manifest's validation seeds start at {first}, inside the test range")
    return evaluate_on_second_generator(
        detector, model=label,
        cases=evaluation_cases(scans_with_lesions=scans_with_lesions, lesion_free_scans=lesion_free_scans, grids=grids),
        validation_seeds=list(range(first, first + validation_phantoms)), n_bootstrap=n_bootstrap)
