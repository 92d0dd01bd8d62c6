"""Package checks run the partner's model in a separate, limited process on the reference
studies: a good package passes; a slow, greedy, crashing or wrongly shaped one fails with the
reason, and the caller carries on."""

from __future__ import annotations

from pathlib import Path

from ai_services.packages import verify_package
from ai_services.sandbox import SandboxLimits, reference_inputs, run_package_checks
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
