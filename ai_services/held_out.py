"""The platform's held-out evaluation of a partner package: after its reference-study checks pass,
the package is run once more (the same sandbox, the same limits, one child run for the whole set)
on a fixed set of synthetic chest CTs it cannot have trained on, and scored by what it would have
added to a report, beside what its partner claims.

The set (`HELD_OUT_SET_NAME`): scans of the evaluation-only generator (`synthetic.eval_phantoms`,
which no model of the project trains on; only evaluation may import it), from fixed seeds
(`HELD_OUT_SEED_BASE`..) disjoint from the reference studies' (`sandbox.REFERENCE_SEEDS`), the
evaluation command's (`evaluation.EVAL_TEST_SEED_BASE`..) and every training seed. Two thirds
hold lesions (seeds whose centre slice shows one), a third none. Each scan is a short volume
(7 slices of 5 mm, 256 x 256 at 1.4 mm: a 358 mm field, as a clinical chest CT) so lesions sit
near its centre, where every package looks.

Each scan is given to the package exactly as a study is (`sandbox.study_inputs`), and its output
read exactly as a study's (`package_outputs.findings_from_output`, mapped back onto the scan by
`sandbox.input_geometry`). The truth is where the lesions are on the key slice (the middle slice
the package sees) inside the part of it the package sees; a lesion showing less than
`MIN_LESION_MM2` there (a cap grazed by the slice) is not counted as one to find, but a region
over it is not a false positive either. The truth never enters the process that runs the
package's code.

Metrics, by output kind, each with its 95% confidence interval (Wilson for proportions, a
percentile bootstrap over cases for the rest) and the number it rests on:

- detection: per-lesion sensitivity (a lesion is found when the box of a reported region overlaps
  it), false positives per case and per lesion-free case (a reported region over no lesion);
- classification: AUROC of the positive class's probability, sensitivity and specificity at the
  most probable class; needs the manifest's `output.positive_class` (otherwise "not evaluated");
- segmentation: mean Dice on the cases with lesions; on the lesion-free cases, the share with any
  foreground and the foreground area per case.

The outputs come back from the child as one array (`run_package(keep_arrays=True)`), each case
reduced to what the findings are read from, instead of the JSON of values a study's run returns:
a detection map of 512 x 512 is 262,144 numbers a case.

Pure (arrays and dataclasses in and out, no Flask, no session).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_services.inference import label_components_3d
from ai_services.masks import decode_mask
from ai_services.package_outputs import PackageOutputError, class_probabilities, findings_from_output
from ai_services.sandbox import (
    DEFAULT_SANDBOX_LIMITS,
    InputGeometry,
    SandboxLimits,
    expected_output_shape,
    input_geometry,
    run_package,
    shape_matches,
    study_inputs,
)
from ai_services.training import auroc
from synthetic.eval_phantoms import EvalGrid, make_eval_scan

logger = logging.getLogger(__name__)

# The set's name keys its disk cache: a new version when the generator, grid or seeds change.
HELD_OUT_SET_NAME = "platform-held-out-v1"
HELD_OUT_GENERATOR = "synthetic.eval_phantoms.make_eval_scan"
HELD_OUT_GRID = EvalGrid("256@1.4mm/5mm x 7", 256, 1.4, 5.0, 7)
# Scans with lesions from here, lesion-free ones from + LESION_FREE_SEED_OFFSET: far from the
# reference studies (910 001..), the evaluation command's test scans (50 000..) and the training
# generator's seed blocks (below 200 000) and the slice classifier's (700 000..).
HELD_OUT_SEED_BASE = 920_000
LESION_FREE_SEED_OFFSET = 500
# `AI_PACKAGE_HELD_OUT_CASES`' default: about 2 s to make (once per process or cache folder), a
# second or two to run a small model on. The intervals at this size are wide, and say so.
DEFAULT_HELD_OUT_CASES = 12
MIN_HELD_OUT_CASES = 3
# The child loads the set whole: 64 cases of 512 x 512 x 6 channels are 400 MB of its 2 GiB.
MAX_HELD_OUT_CASES = 64
# A lesion shows at least this much of itself on the key slice to be one to find (~3 mm across).
MIN_LESION_MM2 = 7.0
N_BOOTSTRAP = 1000
WILSON_Z = 1.959964


# --- the set ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeldOutScan:
    seed: int
    lesion_free: bool
    volume_hu: np.ndarray  # int16 (slices, rows, columns)
    lesion_mask: np.ndarray  # bool, same shape


@dataclass(frozen=True, eq=False)  # one object per size and cache (`held_out_set`), hashed by identity
class HeldOutSet:
    name: str
    scans: tuple[HeldOutScan, ...]

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        return HELD_OUT_GRID.pixel_spacing_mm, HELD_OUT_GRID.pixel_spacing_mm


def held_out_set(n_cases: int = DEFAULT_HELD_OUT_CASES, cache_dir: Path | None = None) -> HeldOutSet:
    """The first `n_cases` of the set (the same scans every time), from this process's memory, else
    from `cache_dir` (an .npz per size), else made (and kept in both)."""
    if not MIN_HELD_OUT_CASES <= n_cases <= MAX_HELD_OUT_CASES:
        raise ValueError(f"the held-out set holds {MIN_HELD_OUT_CASES} to {MAX_HELD_OUT_CASES} cases, not {n_cases}")
    return _held_out_set(n_cases, str(cache_dir) if cache_dir is not None else None)


@functools.lru_cache(maxsize=2)
def _held_out_set(n_cases: int, cache_dir: str | None) -> HeldOutSet:
    cached = Path(cache_dir) / f"{HELD_OUT_SET_NAME}-{n_cases}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as stored:
                return HeldOutSet(HELD_OUT_SET_NAME, tuple(
                    HeldOutScan(int(seed), bool(free), volume, mask) for seed, free, volume, mask in
                    zip(stored["seeds"], stored["lesion_free"], stored["volumes"], stored["masks"], strict=True)))
        except (OSError, ValueError, KeyError) as exc:  # a damaged cache is made again
            logger.warning("held-out cache %s unreadable (%s); making the set again", cached, exc)
    made = _make_set(n_cases)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez(partial, seeds=np.array([s.seed for s in made.scans]),
                 lesion_free=np.array([s.lesion_free for s in made.scans]),
                 volumes=np.stack([s.volume_hu for s in made.scans]), masks=np.stack([s.lesion_mask for s in made.scans]))
        partial.replace(cached)  # whole or absent, for another worker reading it
    return made


def _make_set(n_cases: int) -> HeldOutSet:
    started = time.monotonic()
    n_lesion_free = n_cases // 3
    centre = HELD_OUT_GRID.n_slices // 2
    min_pixels = MIN_LESION_MM2 / HELD_OUT_GRID.pixel_spacing_mm ** 2
    scans: list[HeldOutScan] = []
    seed = HELD_OUT_SEED_BASE
    while len(scans) < n_cases - n_lesion_free:
        scan = _scan(seed, lesion_free=False)
        if scan.lesion_mask[centre].sum() >= min_pixels:  # the lesions are where the packages look
            scans.append(scan)
        seed += 1
    scans.extend(_scan(seed, lesion_free=True) for seed in range(HELD_OUT_SEED_BASE + LESION_FREE_SEED_OFFSET,
                                                                HELD_OUT_SEED_BASE + LESION_FREE_SEED_OFFSET + n_lesion_free))
    logger.info("held-out set of %d cases made in %.1f s", n_cases, time.monotonic() - started)
    return HeldOutSet(HELD_OUT_SET_NAME, tuple(scans))


@functools.lru_cache(maxsize=96)  # sets of several sizes share their first scans; ~1.4 MB a scan
def _scan(seed: int, *, lesion_free: bool) -> HeldOutScan:
    scan = make_eval_scan(seed, HELD_OUT_GRID, n_lesions=0 if lesion_free else None)
    return HeldOutScan(seed, lesion_free, scan.volume_hu, scan.lesion_mask)


@dataclass(frozen=True)
class PackageView:
    """The set as one package sees it: its inputs (cases, channels, rows, columns), where they came
    from (the same for every scan), and each scan's truth on the key slice, in the scan's pixels."""

    inputs: np.ndarray
    geometry: InputGeometry
    truths: tuple[np.ndarray, ...]  # bool (rows, columns): lesion pixels the package sees
    lesions: tuple[np.ndarray, ...]  # int32 (rows, columns): 1..n the lesions to find, 0 elsewhere
    n_lesions: tuple[int, ...]


def package_view(held_out: HeldOutSet, manifest_input: dict[str, Any]) -> PackageView:
    """`held_out` through a manifest's input contract (its `input` object), kept per contract."""
    return _package_view(held_out, json.dumps(manifest_input, sort_keys=True))


@functools.lru_cache(maxsize=2)  # a 512 x 512 contract of 6 channels is ~75 MB of inputs at 12 cases
def _package_view(held_out: HeldOutSet, contract: str) -> PackageView:
    manifest = {"input": json.loads(contract)}
    spacing = held_out.pixel_spacing_mm
    first = held_out.scans[0].volume_hu
    geometry = input_geometry((first.shape[0], first.shape[1], first.shape[2]), spacing, manifest)
    rows, columns = (int(v) for v in manifest["input"]["size"])
    seen = geometry.to_study_mask(np.ones((rows, columns), dtype=bool))
    min_pixels = MIN_LESION_MM2 / (spacing[0] * spacing[1])
    inputs, truths, lesions, counts = [], [], [], []
    for scan in held_out.scans:
        inputs.append(study_inputs(scan.volume_hu.astype(np.float32), spacing, manifest)[0])
        truth = scan.lesion_mask[geometry.key_slice] & seen
        labels, count = label_components_3d(truth[np.newaxis])
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        kept = [label for label in range(1, count + 1) if sizes[label] >= min_pixels]
        numbered = np.zeros(truth.shape, dtype=np.int32)
        for number, label in enumerate(kept, 1):
            numbered[labels[0] == label] = number
        truths.append(truth)
        lesions.append(numbered)
        counts.append(len(kept))
    return PackageView(np.stack(inputs).astype(np.float32), geometry, tuple(truths), tuple(lesions), tuple(counts))


# --- the metrics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One measured number with its 95% CI and what it rests on (`n` of `unit`); `value` None
    with `note` when the set gives nothing to measure it on."""

    name: str
    value: float | None
    ci: tuple[float, float] | None
    n: int
    unit: str
    method: str
    note: str | None = None
    # False for counts of mistakes (false positives, foreground where there is no lesion).
    higher_is_better: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": _rounded(self.value), "n": self.n, "unit": self.unit,
                "ci": [_rounded(self.ci[0]), _rounded(self.ci[1])] if self.ci else None, "method": self.method,
                "note": self.note, "higher_is_better": self.higher_is_better}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def wilson_ci(successes: int, total: int) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (sound at 0 and 1 and for few trials)."""
    if total <= 0:
        return None
    p = successes / total
    denominator = 1 + WILSON_Z ** 2 / total
    centre = (p + WILSON_Z ** 2 / (2 * total)) / denominator
    half = WILSON_Z * math.sqrt(p * (1 - p) / total + WILSON_Z ** 2 / (4 * total ** 2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(name: str, successes: int, total: int, unit: str, empty_note: str, *,
               higher_is_better: bool = True) -> Metric:
    if total == 0:
        return Metric(name, None, None, 0, unit, "wilson", empty_note, higher_is_better)
    return Metric(name, successes / total, wilson_ci(successes, total), total, unit, "wilson", None, higher_is_better)


def bootstrap_ci(groups: Sequence[np.ndarray], statistic: Callable[[list[np.ndarray]], float],
                 n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of `statistic` over resamplings of the cases, each group
    (e.g. positives and negatives) resampled within itself so every replicate has them all."""
    if any(len(group) == 0 for group in groups):
        return None
    rng = np.random.default_rng([seed, 19])
    replicates = [statistic([group[rng.integers(0, len(group), len(group))] for group in groups])
                  for _ in range(n_bootstrap)]
    return float(np.percentile(replicates, 2.5)), float(np.percentile(replicates, 97.5))


def mean_metric(name: str, values: Sequence[float], unit: str, empty_note: str, *,
                higher_is_better: bool = True) -> Metric:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return Metric(name, None, None, 0, unit, "bootstrap", empty_note, higher_is_better)
    return Metric(name, float(array.mean()), bootstrap_ci([array], lambda g: float(g[0].mean())), int(array.size),
                  unit, "bootstrap", None, higher_is_better)


NO_LESION_IN_VIEW = "the set holds no lesion in the part of the key slice the model sees"


def detection_metrics(boxes: Sequence[Sequence[tuple[int, int, int, int]]], view: PackageView,
                      lesion_free: Sequence[bool]) -> tuple[list[Metric], list[dict[str, int]]]:
    """Per case, which of its lesions a box overlaps and how many boxes overlap no lesion pixel."""
    found = total = 0
    false_positives: list[int] = []
    per_case = []
    for case_boxes, numbered, truth in zip(boxes, view.lesions, view.truths, strict=True):
        hit: set[int] = set()
        fp = 0
        for x0, y0, x1, y1 in case_boxes:
            under = numbered[y0:y1, x0:x1]
            hit.update(int(v) for v in np.unique(under[under > 0]))
            fp += not truth[y0:y1, x0:x1].any()
        lesions = int(numbered.max())
        found += len(hit)
        total += lesions
        false_positives.append(fp)
        per_case.append({"lesions": lesions, "found": len(hit), "false_positives": fp})
    free = [fp for fp, is_free in zip(false_positives, lesion_free, strict=True) if is_free]
    return [
        proportion("sensitivity", found, total, "lesions", NO_LESION_IN_VIEW),
        mean_metric("fp_per_case", false_positives, "cases", "no case", higher_is_better=False),
        mean_metric("fp_per_lesion_free_case", free, "lesion-free cases", "the set holds no lesion-free case",
                    higher_is_better=False),
    ], per_case


def classification_metrics(scores: Sequence[float], predicted: Sequence[bool],
                           labels: Sequence[bool]) -> list[Metric]:
    """AUROC of the positive class's probability; sensitivity and specificity of the most probable
    class (`predicted`: it is the positive class)."""
    score = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels, dtype=bool)
    said = np.asarray(predicted, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos and n_neg:
        pos, neg = score[positive], score[~positive]
        value = auroc(score, positive)
        ci = bootstrap_ci([pos, neg], lambda g: auroc(np.concatenate(g), np.r_[np.ones(len(g[0])), np.zeros(len(g[1]))]))
        area = Metric("auroc", value, ci, n_pos + n_neg, "cases", "bootstrap")
    else:
        area = Metric("auroc", None, None, n_pos + n_neg, "cases", "bootstrap",
                      "AUROC needs cases with and without a lesion in the model's view")
    return [area,
            proportion("sensitivity", int((said & positive).sum()), n_pos, "cases with a lesion", NO_LESION_IN_VIEW),
            proportion("specificity", int((~said & ~positive).sum()), n_neg, "cases without a lesion",
                       "the set holds no case without a lesion in the model's view")]


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    both = int(predicted.sum()) + int(truth.sum())
    return 1.0 if both == 0 else 2.0 * int((predicted & truth).sum()) / both


def segmentation_metrics(masks: Sequence[np.ndarray], view: PackageView, lesion_free: Sequence[bool],
                         pixel_mm2: float) -> tuple[list[Metric], list[dict[str, float]]]:
    """Dice on the cases with a lesion to find; foreground on the lesion-free ones."""
    scores, areas = [], []
    with_foreground = 0
    per_case: list[dict[str, float]] = []
    for mask, truth, count, is_free in zip(masks, view.truths, view.n_lesions, lesion_free, strict=True):
        if count:
            scores.append(dice(mask, truth))
            per_case.append({"lesions": count, "dice": round(scores[-1], 4)})
        elif is_free:
            areas.append(float(mask.sum()) * pixel_mm2)
            with_foreground += bool(mask.any())
            per_case.append({"lesions": 0, "foreground_mm2": round(areas[-1], 1)})
        else:
            per_case.append({"lesions": 0})
    return [
        mean_metric("dice", scores, "cases with a lesion", NO_LESION_IN_VIEW),
        proportion("lesion_free_cases_with_foreground", with_foreground, len(areas), "lesion-free cases",
                   "the set holds no lesion-free case", higher_is_better=False),
        mean_metric("foreground_mm2_per_lesion_free_case", areas, "lesion-free cases", "the set holds no lesion-free case",
                    higher_is_better=False),
    ], per_case


# --- claims ----------------------------------------------------------------------------------


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]


def matching_metric(key: str, metrics: Sequence[Metric]) -> Metric | None:
    """The measured metric a claimed `validated_metrics` key speaks of: the one whose name's words
    appear together in the key's ("slice_auroc_synthetic_heldout" -> auroc), the longest if several."""
    words = _words(key)
    best: Metric | None = None
    for metric in metrics:
        name = _words(metric.name)
        inside = any(words[i:i + len(name)] == name for i in range(len(words) - len(name) + 1))
        if inside and (best is None or len(name) > len(_words(best.name))):
            best = metric
    return best


def compare_claims(claimed: dict[str, Any], metrics: Sequence[Metric]) -> list[dict[str, Any]]:
    """Each claim beside the measured number it matches, where it lies against the 95% CI ("above",
    "inside", "below"; None when nothing was measured), and whether it is `better_than_measured`:
    above the CI of a metric where higher is better, below it for a count of mistakes (false
    positives). That is the claim the set does not bear out, marked for the administrator."""
    compared = []
    for key, value in claimed.items():
        metric = matching_metric(key, metrics)
        if metric is None:
            continue
        position = None
        if metric.ci is not None and isinstance(value, int | float):
            position = "above" if value > metric.ci[1] else "below" if value < metric.ci[0] else "inside"
        compared.append({"key": key, "claimed": value, "metric": metric.name, "measured": _rounded(metric.value),
                         "ci": [_rounded(metric.ci[0]), _rounded(metric.ci[1])] if metric.ci else None,
                         "position": position,
                         "better_than_measured": position == ("above" if metric.higher_is_better else "below")})
    return compared


# --- the evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutReport:
    """The evaluation, or its failure (`reason`: the package crashed or ran past a limit, or its
    output broke the manifest's promise), which fails the checks."""

    reason: str | None
    seconds: float
    seeds: tuple[int, ...] = ()
    n_lesion_free: int = 0
    metrics: list[Metric] = field(default_factory=list)
    not_evaluated: str | None = None
    claims: list[dict[str, Any]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        return {
            "set": HELD_OUT_SET_NAME, "generator": HELD_OUT_GENERATOR, "grid": HELD_OUT_GRID.name,
            "seeds": list(self.seeds), "n_cases": len(self.seeds), "n_lesion_free": self.n_lesion_free,
            "n_lesions": sum(int(c.get("lesions", 0)) for c in self.cases), "passed": self.passed,
            "reason": self.reason, "not_evaluated": self.not_evaluated,
            "metrics": [m.to_json() for m in self.metrics], "claims": self.claims, "cases": self.cases,
            "seconds": round(self.seconds, 3),
        }


def evaluate_held_out(root: Path, manifest: dict[str, Any], limits: SandboxLimits = DEFAULT_SANDBOX_LIMITS, *,
                      n_cases: int = DEFAULT_HELD_OUT_CASES, cache_dir: Path | None = None) -> HeldOutReport:
    """Run the package unpacked at `root` on the held-out set in the sandbox and score it."""
    started = time.monotonic()
    held_out = held_out_set(n_cases, cache_dir)
    seeds = tuple(scan.seed for scan in held_out.scans)
    lesion_free = [scan.lesion_free for scan in held_out.scans]
    view = package_view(held_out, manifest["input"])
    run = run_package(root, view.inputs, limits, where="the held-out set", keep_values=False, keep_arrays=True)

    def failed(reason: str) -> HeldOutReport:
        return HeldOutReport(reason, time.monotonic() - started, seeds, sum(lesion_free))

    if run.reason is not None:
        return failed(run.reason)
    if run.result.get("error"):
        return failed(f"the model failed on the held-out set: {str(run.result['error'])[:300]}")
    problem = _output_problem(run.result.get("cases") or [], run.outputs, manifest, len(held_out.scans))
    if problem is not None:
        return failed(problem)
    assert run.outputs is not None
    try:
        scored = score_outputs(run.outputs, held_out, view, manifest)
    except PackageOutputError as exc:
        return failed(f"the model's output on the held-out set was not usable: {exc}")
    return dataclasses.replace(scored, seconds=time.monotonic() - started)


def score_outputs(outputs: np.ndarray, held_out: HeldOutSet, view: PackageView,
                  manifest: dict[str, Any]) -> HeldOutReport:
    """Score a package's outputs on the set (each case reduced as `sandbox.reduced_output` does),
    read as a study's are, against the truth of `view`."""
    kind = manifest["output"]["kind"]
    spacing = held_out.pixel_spacing_mm
    lesion_free = [scan.lesion_free for scan in held_out.scans]
    seeds = tuple(scan.seed for scan in held_out.scans)
    if kind == "classification":
        report = _classification(outputs, view, manifest)
    else:
        shape = [1, 1, *outputs.shape[1:]]
        findings = [findings_from_output(case, shape, manifest, view.geometry, spacing) for case in outputs]
        cases: Sequence[dict[str, Any]]
        if kind == "detection":
            metrics, cases = detection_metrics([[f.box for f in found] for found in findings], view, lesion_free)
        else:
            rows, columns = view.geometry.study_size
            masks = [decode_mask(found[0].mask_runs or (), rows, columns) if found
                     else np.zeros((rows, columns), dtype=bool) for found in findings]
            metrics, cases = segmentation_metrics(masks, view, lesion_free, spacing[0] * spacing[1])
        report = HeldOutReport(None, 0.0, metrics=metrics, cases=list(cases))
    claims = compare_claims(dict(manifest.get("validated_metrics", {})), report.metrics)
    for case, seed, free in zip(report.cases, seeds, lesion_free, strict=True):
        case.update(seed=seed, lesion_free=free)
    return HeldOutReport(None, 0.0, seeds, sum(lesion_free), report.metrics, report.not_evaluated, claims, report.cases)


def _output_problem(cases: list[Any], outputs: np.ndarray | None, manifest: dict[str, Any], expected: int) -> str | None:
    if outputs is None or len(cases) != expected or outputs.shape[0] != expected:
        return f"expected {expected} results on the held-out set, got {len(cases)}"
    wanted = expected_output_shape(manifest)
    for number, case in enumerate(cases, 1):
        shape = [int(v) for v in case.get("shape", [])] if isinstance(case, dict) else []
        if not shape_matches(shape, wanted):
            return (f"held-out case {number}: output shape {shape}, the manifest's {manifest['output']['kind']} "
                    f"output needs {['any' if e is None else e for e in wanted]}")
        if not case.get("finite"):
            return f"held-out case {number}: the output holds NaN or infinity"
    kept = (len(manifest["output"]["classes"]),) if manifest["output"]["kind"] == "classification" else \
        tuple(int(v) for v in manifest["input"]["size"])
    if outputs.shape[1:] != kept:  # the array must be what the child said it ran
        return f"the outputs on the held-out set have shape {list(outputs.shape)}, not {[expected, *kept]}"
    return None


def _classification(outputs: np.ndarray, view: PackageView, manifest: dict[str, Any]) -> HeldOutReport:
    classes = list(manifest["output"]["classes"])
    positive_class = manifest["output"].get("positive_class")
    labels = [count > 0 for count in view.n_lesions]
    cases: list[dict[str, Any]] = [{"lesions": count} for count in view.n_lesions]
    if positive_class is None:
        return HeldOutReport(None, 0.0, cases=cases, not_evaluated="the manifest names no positive class")
    positive = classes.index(positive_class)
    said = [findings_from_output(case, [1, len(classes)], manifest, view.geometry, (1.0, 1.0))[0].label
            for case in outputs]
    scores = [float(class_probabilities(case)[positive]) for case in outputs]
    for case, score, label in zip(cases, scores, said, strict=True):
        case.update(score=round(score, 4), said=label)
    return HeldOutReport(None, 0.0, metrics=classification_metrics(scores, [s == positive_class for s in said], labels),
                         cases=cases)
