"""The project's own second package (a slice classifier, another output kind than the lesion
detector) is trained from synthetic phantoms by its script and passes the same verification and
sandbox checks as a partner's package."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ai_services.packages import verify_package
from ai_services.sandbox import SandboxLimits, run_package_checks
from ai_services.slice_classifier import build_package


def test_the_slice_classifier_package_is_reproduced_by_its_script_and_passes_the_checks(tmp_path: Path) -> None:
    result = build_package(tmp_path / "built", seed=0)
    assert result.package.name == "slice-classifier-1.0.0.zip"
    assert 0.0 <= result.auroc <= 1.0 and not math.isnan(result.auroc)
    package = verify_package(result.package, tmp_path / "out")
    assert package.manifest["output"] == {"kind": "classification", "classes": ["no lesion", "lesion"],
                                         "positive_class": "lesion"}
    assert package.manifest["validated_metrics"]["slice_auroc_synthetic_heldout"] == round(result.auroc, 4)
    report = run_package_checks(package.root, package.manifest, SandboxLimits(wall_seconds=60, cpu_seconds=60))
    assert report.passed, report.reason
    # Same seed, same weights: the hash in the manifest is reproduced by a second build.
    again = build_package(tmp_path / "again", seed=0)
    first = json.loads((tmp_path / "built" / "slice-classifier-1.0.0" / "manifest.json").read_text())
    second = json.loads((tmp_path / "again" / "slice-classifier-1.0.0" / "manifest.json").read_text())
    assert first["files"] == second["files"] and again.auroc == result.auroc
