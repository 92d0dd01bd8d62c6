"""The held-out evaluation of partner packages: the metric functions on hand-made outputs with known
answers, the shipped slice classifier scored as weak as it is (a far higher claim marked), detection
and segmentation packages scored, and a package that crashes or over-runs on the set failing its
checks with the reason."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_services.held_out import (
    HELD_OUT_SEED_BASE,
    PackageView,
    classification_metrics,
    compare_claims,
    detection_metrics,
    dice,
    held_out_set,
    matching_metric,
    package_view,
    score_outputs,
    segmentation_metrics,
    wilson_ci,
)
from ai_services.network import LesionUNet
from ai_services.package_service import run_checks_and_held_out
from ai_services.packages import verify_package, write_package
from ai_services.sandbox import REFERENCE_SEEDS, SandboxLimits
from ai_services.slice_classifier import build_package
from tests.ai_services.package_factory import classifier_manifest, make_fine_then_failing_package, make_map_package

SMALL_SET = 6  # 4 scans with lesions, 2 without: enough to score, quick to run
# The set's own grid: its inputs are the scans' centre slices, pixel for pixel.
NATIVE_INPUT = {"spacing_mm": [1.4, 1.4, 5.0], "size": [256, 256], "channels": 1}


def _metric(report: dict[str, object], name: str) -> dict[str, object]:
    metrics = report["metrics"]
    assert isinstance(metrics, list)
    return next(m for m in metrics if m["name"] == name)


# --- the metric functions on outputs with known answers ---------------------------------------


def _two_lesion_view() -> PackageView:
    """A 20 x 20 key slice with two lesions (a 3 x 3 and a 2 x 2 square), seen whole."""
    numbered = np.zeros((20, 20), dtype=np.int32)
    numbered[2:5, 2:5] = 1
    numbered[10:12, 10:12] = 2
    empty = np.zeros((20, 20), dtype=np.int32)
    return PackageView(np.zeros((2, 1, 20, 20), np.float32), None,  # type: ignore[arg-type]
                       (numbered > 0, empty > 0), (numbered, empty), (2, 0))


def test_boxes_on_exactly_the_lesions_find_them_all_with_no_false_positive() -> None:
    view = _two_lesion_view()
    metrics, cases = detection_metrics([[(2, 2, 5, 5), (10, 10, 12, 12)], []], view, [False, True])
    by_name = {m.name: m for m in metrics}
    assert by_name["sensitivity"].value == 1.0 and by_name["sensitivity"].n == 2
    assert by_name["fp_per_case"].value == 0.0 and by_name["fp_per_lesion_free_case"].value == 0.0
    assert cases == [{"lesions": 2, "found": 2, "false_positives": 0}, {"lesions": 0, "found": 0, "false_positives": 0}]


def test_a_box_over_no_lesion_is_a_false_positive_and_a_missed_lesion_lowers_sensitivity() -> None:
    view = _two_lesion_view()
    metrics, _ = detection_metrics([[(3, 3, 4, 4), (15, 15, 18, 18)], [(0, 0, 3, 3)]], view, [False, True])
    by_name = {m.name: m for m in metrics}
    assert by_name["sensitivity"].value == 0.5
    assert by_name["fp_per_case"].value == 1.0 and by_name["fp_per_lesion_free_case"].value == 1.0
    assert not by_name["fp_per_case"].higher_is_better


def test_wilson_interval_and_dice_have_their_textbook_values() -> None:
    low, high = wilson_ci(5, 10) or (0, 0)
    assert math.isclose(low, 0.2366, abs_tol=1e-4) and math.isclose(high, 0.7634, abs_tol=1e-4)
    assert wilson_ci(0, 8) == (0.0, pytest.approx(0.3244, abs=1e-4))
    assert wilson_ci(0, 0) is None
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True
    assert dice(truth, truth) == 1.0
    half = np.zeros((4, 4), bool)
    half[:2, :1] = True
    assert dice(half, truth) == pytest.approx(2 * 2 / (2 + 4))


def test_a_segmentation_of_exactly_the_lesions_has_dice_one_and_no_foreground_where_there_is_none() -> None:
    view = _two_lesion_view()
    metrics, _ = segmentation_metrics([view.truths[0], np.zeros((20, 20), bool)], view, [False, True], 2.0)
    by_name = {m.name: m for m in metrics}
    assert by_name["dice"].value == 1.0
    assert by_name["lesion_free_cases_with_foreground"].value == 0.0
    assert by_name["foreground_mm2_per_lesion_free_case"].value == 0.0
    spilled, _ = segmentation_metrics([view.truths[0], np.ones((20, 20), bool)], view, [False, True], 2.0)
    assert {m.name: m.value for m in spilled}["foreground_mm2_per_lesion_free_case"] == 800.0


def test_perfect_scores_give_auroc_one_and_a_coin_gives_one_half() -> None:
    labels = [True, True, True, False, False, False]
    perfect = {m.name: m for m in classification_metrics([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [True] * 3 + [False] * 3, labels)}
    assert perfect["auroc"].value == 1.0 and perfect["sensitivity"].value == 1.0 and perfect["specificity"].value == 1.0
    assert perfect["auroc"].ci == (1.0, 1.0)
    coin = {m.name: m for m in classification_metrics([0.5] * 6, [False] * 6, labels)}
    assert coin["auroc"].value == 0.5 and coin["sensitivity"].value == 0.0 and coin["specificity"].value == 1.0


def test_claims_are_matched_by_name_and_marked_when_better_than_the_interval() -> None:
    scores = [0.2, 0.3, 0.6, 0.4, 0.7, 0.8]  # three with a lesion, then three without: AUROC 1/9
    metrics = classification_metrics(scores, [s > 0.5 for s in scores], [True] * 3 + [False] * 3)
    assert matching_metric("slice_auroc_synthetic_heldout", metrics).name == "auroc"  # type: ignore[union-attr]
    assert matching_metric("ppv", metrics) is None
    claims = {c["key"]: c for c in compare_claims({"slice_auroc_synthetic_heldout": 0.99, "specificity": 0.5,
                                                   "ppv": 0.9}, metrics)}
    assert set(claims) == {"slice_auroc_synthetic_heldout", "specificity"}
    assert claims["slice_auroc_synthetic_heldout"]["position"] == "above"
    assert claims["slice_auroc_synthetic_heldout"]["better_than_measured"] is True
    assert claims["specificity"]["position"] == "inside" and not claims["specificity"]["better_than_measured"]
    detection, _ = detection_metrics([[(0, 0, 20, 20)], [(0, 0, 3, 3)]], _two_lesion_view(), [False, True])
    fp = {c["key"]: c for c in compare_claims({"fp_per_lesion_free_case": 0.0, "fp_per_case": 5.0}, detection)}
    # One false positive on the lesion-free case: a claim of none is better than measured (below).
    assert fp["fp_per_lesion_free_case"]["metric"] == "fp_per_lesion_free_case"
    assert fp["fp_per_lesion_free_case"]["position"] == "below" and fp["fp_per_lesion_free_case"]["better_than_measured"]
    assert fp["fp_per_case"]["position"] == "above" and not fp["fp_per_case"]["better_than_measured"]


def test_oracle_maps_made_from_the_truth_score_perfectly_through_the_study_rules() -> None:
    held_out = held_out_set(SMALL_SET)
    view = package_view(held_out, NATIVE_INPUT)
    assert view.geometry.key_slice == 3 and view.inputs.shape == (SMALL_SET, 1, 256, 256)
    oracle = np.stack([truth.astype(np.float32) * 0.9 for truth in view.truths])
    detection = score_outputs(oracle, held_out, view, classifier_manifest(output={"kind": "detection"},
                                                                          input=NATIVE_INPUT)).to_json()
    assert _metric(detection, "sensitivity")["value"] == 1.0 and _metric(detection, "fp_per_case")["value"] == 0.0
    assert detection["n_lesions"] >= 4 and detection["n_lesion_free"] == 2
    segmentation = score_outputs(oracle, held_out, view, classifier_manifest(output={"kind": "segmentation"},
                                                                             input=NATIVE_INPUT)).to_json()
    assert _metric(segmentation, "dice")["value"] == 1.0
    assert _metric(segmentation, "lesion_free_cases_with_foreground")["value"] == 0.0


def test_the_set_is_fixed_disjoint_from_the_reference_seeds_and_holds_lesion_free_scans() -> None:
    held_out = held_out_set(SMALL_SET)
    seeds = [scan.seed for scan in held_out.scans]
    assert all(seed >= HELD_OUT_SEED_BASE for seed in seeds) and not set(seeds) & set(REFERENCE_SEEDS)
    assert [scan.lesion_free for scan in held_out.scans] == [False] * 4 + [True] * 2
    assert not any(scan.lesion_mask.any() for scan in held_out.scans if scan.lesion_free)
    assert held_out_set(SMALL_SET) is held_out  # made once per process


def test_the_set_is_kept_on_disk_and_read_back_the_same(tmp_path: Path) -> None:
    made = held_out_set(3, tmp_path)
    assert (tmp_path / "platform-held-out-v1-3.npz").is_file()
    from ai_services import held_out as module

    module._held_out_set.cache_clear()  # as a fresh worker process would find it
    read = held_out_set(3, tmp_path)
    assert read is not made and [s.seed for s in read.scans] == [s.seed for s in made.scans]
    assert all(np.array_equal(a.volume_hu, b.volume_hu) for a, b in zip(read.scans, made.scans, strict=True))


# --- packages in the sandbox -------------------------------------------------------------------


def test_the_slice_classifier_is_scored_as_weak_as_it_is_and_a_far_higher_claim_is_marked(tmp_path: Path) -> None:
    built = build_package(tmp_path / "built", seed=0)
    shipped = verify_package(built.package, tmp_path / "shipped")
    started = time.monotonic()
    report = run_checks_and_held_out(shipped.root, shipped.manifest, SandboxLimits(wall_seconds=60, cpu_seconds=60))
    print(f"checks with the held-out evaluation: {time.monotonic() - started:.1f} s")
    assert report.passed, report.reason
    held = report.held_out
    assert held is not None and held["n_cases"] == 12 and held["n_lesion_free"] == 4
    area = _metric(held, "auroc")
    assert area["value"] is not None and area["value"] < 0.75  # about chance, as its README says
    assert area["ci"][0] < 0.5 < area["ci"][1] and area["n"] == 12
    own_claim = held["claims"][0]
    assert own_claim["key"] == "slice_auroc_synthetic_heldout" and own_claim["metric"] == "auroc"
    assert own_claim["position"] == "inside" and not own_claim["better_than_measured"]

    bold = json.loads((shipped.root / "manifest.json").read_text())
    bold["validated_metrics"] = {"auroc": 0.97}
    claimed = write_package(tmp_path / "bold", bold, shipped.weights_path)
    bold_report = run_checks_and_held_out(claimed, bold, SandboxLimits(wall_seconds=60, cpu_seconds=60))
    assert bold_report.held_out is not None
    assert bold_report.held_out["claims"] == [{**own_claim, "key": "auroc", "claimed": 0.97, "position": "above",
                                               "better_than_measured": True}]


def test_a_classifier_without_a_positive_class_passes_but_is_not_evaluated(tmp_path: Path) -> None:
    from tests.ai_services.package_factory import make_classifier_package

    package = verify_package(make_classifier_package(tmp_path), tmp_path / "out")
    report = run_checks_and_held_out(package.root, package.manifest, held_out_cases=SMALL_SET)
    assert report.passed and report.held_out is not None
    assert report.held_out["not_evaluated"] == "the manifest names no positive class"
    assert report.held_out["metrics"] == [] and report.held_out["claims"] == []


@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_detection_and_segmentation_packages_get_their_numbers(tmp_path: Path, kind: str) -> None:
    # Marks as foreground what the lung window shows as soft tissue or brighter: every lesion, and much else.
    package = verify_package(make_map_package(tmp_path, kind, threshold=0.6, input=NATIVE_INPUT), tmp_path / "out")
    report = run_checks_and_held_out(package.root, package.manifest, held_out_cases=SMALL_SET)
    assert report.passed, report.reason
    held = report.held_out
    assert held is not None and held["passed"] and held["n_cases"] == SMALL_SET
    if kind == "detection":
        sensitivity = _metric(held, "sensitivity")
        assert sensitivity["n"] == held["n_lesions"] >= 4 and sensitivity["value"] == 1.0
        assert 0.0 <= sensitivity["ci"][0] < 1.0 == sensitivity["ci"][1]
        assert _metric(held, "fp_per_lesion_free_case")["n"] == 2
    else:
        score = _metric(held, "dice")
        assert score["n"] == 4 and 0.0 < score["value"] < 0.5  # the lesions, drowned in the body
        assert _metric(held, "lesion_free_cases_with_foreground")["value"] == 1.0
        assert any(c["key"] == "dice" and c["position"] == "above" and c["better_than_measured"]
                   for c in held["claims"])


def test_a_package_that_crashes_on_the_held_out_set_fails_its_checks_with_the_reason(tmp_path: Path) -> None:
    package = verify_package(make_fine_then_failing_package(tmp_path, crash=True), tmp_path / "out")
    report = run_checks_and_held_out(package.root, package.manifest, held_out_cases=SMALL_SET)
    assert not report.passed
    assert report.reason is not None and report.reason.startswith("the model failed on the held-out set:")
    assert "out of cheese" in report.reason and len(report.cases) == 3  # the reference studies had passed
    assert report.held_out is not None and report.held_out["reason"] == report.reason


def test_a_package_that_runs_past_its_limit_on_the_held_out_set_fails_its_checks(tmp_path: Path) -> None:
    package = verify_package(make_fine_then_failing_package(tmp_path, crash=False), tmp_path / "out")
    report = run_checks_and_held_out(package.root, package.manifest, SandboxLimits(wall_seconds=6, cpu_seconds=30),
                                     held_out_cases=SMALL_SET)
    assert not report.passed
    assert report.reason == "ran past the time limit of 6 s on the held-out set"


def test_a_512_lesion_unet_state_dict_detector_gets_through_the_full_set_on_cpu(tmp_path: Path) -> None:
    """The shape of the built-in detector as a package (3 slices, 512 x 512): the held-out run of
    the default 12 cases takes seconds on CPU, not minutes."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(LesionUNet(in_channels=3).state_dict(), buffer)
    manifest = classifier_manifest(
        name="unet-detector", output={"kind": "detection"},
        input={"spacing_mm": [1.25, 1.25, 2.5], "size": [512, 512], "channels": 3},
        weights={"file": "weights.pt", "format": "state_dict", "architecture": "lesion-unet",
                 "architecture_args": {"in_channels": 3}},
        validated_metrics={"sensitivity": 0.9, "fp_per_case": 0.5})
    package = verify_package(write_package(tmp_path / "src", manifest, buffer.getvalue()), tmp_path / "out")
    report = run_checks_and_held_out(package.root, package.manifest)
    assert report.passed, report.reason
    held = report.held_out
    assert held is not None and held["n_cases"] == 12
    print(f"held-out run of a 512 x 512 U-Net: {held['seconds']:.1f} s")
    assert held["seconds"] < 60
    assert {c["key"] for c in held["claims"]} == {"sensitivity", "fp_per_case"}
