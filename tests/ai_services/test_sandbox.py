"""Package checks run the partner's model in a separate, limited process on the reference
studies: a good package passes; a slow, greedy, crashing or wrongly shaped one fails with the
reason, and the caller carries on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ai_services.packages import verify_package
from ai_services.sandbox import SandboxLimits, reference_inputs, run_package, run_package_checks, study_inputs
from tests.ai_services.package_factory import (
    classifier_manifest,
    make_classifier_package,
    make_torchscript_package,
)

QUICK = SandboxLimits(wall_seconds=60, cpu_seconds=60, memory_bytes=2 * 1024**3)


def test_reference_inputs_follow_the_manifest() -> None:
    inputs = reference_inputs(classifier_manifest(input={"spacing_mm": [1.5, 1.5, 5.0], "size": [48, 64],
                                                         "channels": 4, "windows_hu": [[-500, 1500], [40, 400]]}))
    assert inputs.shape == (3, 4, 48, 64)
    assert inputs.min() >= 0.0 and inputs.max() <= 1.0 and inputs.std() > 0.05


def test_a_good_state_dict_package_passes(tmp_path: Path) -> None:
    package = verify_package(make_classifier_package(tmp_path), tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, QUICK)
    assert report.passed, report.reason
    assert [case["shape"] for case in report.cases] == [[1, 2]] * 3


def test_a_good_torchscript_package_passes(tmp_path: Path) -> None:
    package = verify_package(make_torchscript_package(tmp_path), tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, QUICK)
    assert report.passed, report.reason


def test_a_model_that_runs_too_long_is_stopped_with_the_reason(tmp_path: Path) -> None:
    package = verify_package(make_torchscript_package(tmp_path, loops=10**9), tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, SandboxLimits(wall_seconds=8, cpu_seconds=60))
    assert not report.passed
    assert report.reason == "ran past the time limit of 8 s on the reference studies"
    assert report.seconds < 30


def test_a_model_that_runs_past_its_cpu_time_is_stopped(tmp_path: Path) -> None:
    package = verify_package(make_torchscript_package(tmp_path, loops=10**9), tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, SandboxLimits(wall_seconds=60, cpu_seconds=4))
    assert not report.passed
    assert report.reason == "ran past the CPU limit of 4 s on the reference studies"


def test_a_model_that_allocates_too_much_memory_fails_with_the_reason(tmp_path: Path) -> None:
    package = verify_package(make_torchscript_package(tmp_path, allocate=2**30), tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, QUICK)
    assert not report.passed
    assert report.reason == "ran past the memory limit of 2048 MiB on the reference studies"


def test_an_output_of_the_wrong_shape_fails(tmp_path: Path) -> None:
    # The manifest promises three classes; the weights give two logits.
    package_path = make_torchscript_package(
        tmp_path, output={"kind": "classification", "classes": ["a", "b", "c"]})
    package = verify_package(package_path, tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, QUICK)
    assert not report.passed
    assert report.reason is not None and "output shape [1, 2]" in report.reason and "[1, 3]" in report.reason


def test_a_model_that_raises_fails_with_its_error(tmp_path: Path) -> None:
    # Four input channels into a classifier built for one: the convolution raises.
    package_path = make_classifier_package(
        tmp_path, input={"spacing_mm": [1.5, 1.5, 5.0], "size": [64, 64], "channels": 4})
    package = verify_package(package_path, tmp_path / "out")
    report = run_package_checks(package.root, package.manifest, QUICK)
    assert not report.passed
    assert report.reason is not None and report.reason.startswith("the model failed on the reference studies: RuntimeError")


def test_a_package_run_on_a_study_hands_back_its_output_values(tmp_path: Path) -> None:
    """The run on a study goes the checks' way (same child, same limits) and returns what the model
    said: here the same logits the classifier gives in this process."""
    from ai_services.packages import build_state_dict_model

    package = verify_package(make_classifier_package(tmp_path), tmp_path / "out")
    inputs = reference_inputs(package.manifest)[:2]
    run = run_package(package.root, inputs, QUICK)
    assert run.reason is None
    model = build_state_dict_model(package.manifest, package.root / str(package.manifest["weights"]["file"]))
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    got = np.array([case["values"] for case in run.result["cases"]])
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_package_that_over_runs_on_a_study_says_so_for_the_study(tmp_path: Path) -> None:
    package = verify_package(make_torchscript_package(tmp_path, loops=10**9), tmp_path / "out")
    run = run_package(package.root, reference_inputs(package.manifest)[:1],
                      SandboxLimits(wall_seconds=60, cpu_seconds=3))
    assert run.reason == "ran past the CPU limit of 3 s on the study"
    assert "cases" not in run.result


def test_a_study_is_shown_to_a_package_at_its_spacing_size_and_windows() -> None:
    manifest = classifier_manifest(input={"spacing_mm": [1.0, 1.0, 5.0], "size": [32, 48], "channels": 2,
                                          "windows_hu": [[-500, 1500], [40, 400]]})
    # 5 slices of 40 x 40 at 0.5 mm: 20 x 20 mm at the manifest's 1 mm, padded with air to 32 x 48.
    hu = np.full((5, 40, 40), 40.0, dtype=np.float32)
    hu[2] = 240.0  # the centre slice, the one a one-slice-per-window package sees
    inputs = study_inputs(hu, (0.5, 0.5), manifest)
    assert inputs.shape == (1, 2, 32, 48)
    lung, soft = inputs[0, 0], inputs[0, 1]
    assert soft[0, 0] == 0.0  # air outside the scanned field
    assert abs(lung[0, 0] - (-1024 + 1250) / 1500) < 1e-6
    assert soft[16, 24] == 1.0  # 240 HU is the top of the soft-tissue window 40/400
    assert np.count_nonzero(soft > 0.0) == 20 * 20
