"""Issue #19: the platform's lesion detector is the first model package through the partner path.
Packed in the partner format, it is verified, checked in the sandbox, approved by an administrator
(which makes its version the active detector), routed by the same rules and billed at its own
price; a package that would pass itself off as the platform's detector is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.detector_package import DetectorPackError, pack_detector
from ai_services.jobs import analyse_study_again
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    ModelVersion,
    PackageAnalysis,
    PackageStatus,
)
from ai_services.network import PackagedLesionUNet
from ai_services.package_service import approve_package, retire_package, submit_package
from ai_services.packages import PackageRefused, build_state_dict_model, verify_package, write_package
from ai_services.routing import add_routing_rule
from ai_services.service import active_model_version
from billing.models import ChargeItem
from hospital.errors import Conflict, Forbidden
from hospital.models import Organization, OrganizationKind
from hospital.seed import DemoSeed
from tests.ai_services import gate_series
from tests.ai_services.test_not_applicable import store_study

PLATFORM = "Closed-Loop Imaging Platform"


@pytest.fixture
def shipped(app: Flask) -> Path:
    return Path(app.config["AI_WEIGHTS"])


def test_the_packaged_network_reads_the_package_channel_order_and_answers_probabilities() -> None:
    torch.manual_seed(0)
    packaged = PackagedLesionUNet(in_channels=6, widths=(4, 8, 8, 8), n_windows=2).eval()
    # Slice by slice, each through both windows: what the network was trained on.
    slice_major = torch.rand(1, 6, 32, 32)
    # The package contract: every slice through the first window, then every slice through the second.
    window_major = slice_major.reshape(1, 3, 2, 32, 32).transpose(1, 2).reshape(1, 6, 32, 32)
    with torch.no_grad():
        expected = torch.sigmoid(super(PackagedLesionUNet, packaged).forward(slice_major))
        assert torch.allclose(packaged(window_major), expected, atol=1e-6)
        assert not torch.allclose(packaged(slice_major), expected, atol=1e-3)


def test_the_shipped_detector_packs_into_a_package_that_verifies(shipped: Path, tmp_path: Path) -> None:
    written = pack_detector(shipped, tmp_path / "detector.zip", partner_organization=PLATFORM, price_minor=4500,
                            currency="eur")
    package = verify_package(written, tmp_path / "unpacked")
    manifest, detector = package.manifest, json.loads(shipped.with_suffix(".json").read_text())
    assert manifest["runtime"] == "platform-detector" and manifest["output"] == {"kind": "detection"}
    assert (manifest["name"], manifest["version"]) == (detector["model_name"], detector["version"])
    assert manifest["price"] == {"amount_minor": 4500, "currency": "EUR"} and manifest["partner_share_bp"] == 0
    assert manifest["modalities"] == ["CT"] and "CHEST" in manifest["body_parts"]
    grid = detector["preprocessing"]
    assert manifest["input"]["spacing_mm"] == [grid["in_plane_spacing_mm"]] * 2 + [grid["context_offset_mm"]]
    assert manifest["input"]["windows_hu"] == detector["architecture"]["windows_hu"]
    # The detector's own manifest travels beside its weights, hashed, byte for byte.
    assert set(manifest["files"]) == {shipped.name, shipped.with_suffix(".json").name}
    assert (package.root / shipped.with_suffix(".json").name).read_bytes() == shipped.with_suffix(".json").read_bytes()
    assert manifest["files"][shipped.name] == detector["sha256"]
    assert manifest["validated_metrics"]["froc_sensitivity_at_1fp"] == detector["heldout_metrics"]["froc_sensitivity_at_1fp"]
    model = build_state_dict_model(manifest, package.weights_path)
    assert isinstance(model, PackagedLesionUNet) and list(model.widths) == detector["architecture"]["widths"]


def _repacked(tmp_path: Path, shipped: Path, change: Any) -> Path:
    """The shipped package with its detector manifest (or its package manifest) changed and
    every hash made right again: only the consistency checks can refuse it."""
    source = pack_detector(shipped, tmp_path / "good.zip", partner_organization=PLATFORM, price_minor=1, currency="EUR")
    unpacked = verify_package(source, tmp_path / "good").root
    manifest = json.loads((unpacked / "manifest.json").read_text())
    detector_file = unpacked / shipped.with_suffix(".json").name
    detector = json.loads(detector_file.read_text())
    change(manifest, detector)
    layout = tmp_path / "changed"
    shutil.copytree(unpacked, layout)
    (layout / "manifest.json").unlink()
    (layout / detector_file.name).write_text(json.dumps(detector))
    return write_package(layout, manifest, layout / shipped.name, zip_to=tmp_path / "changed.zip")


@pytest.mark.parametrize(("change", "reason"), [
    (lambda m, d: d.update(sha256="0" * 64), "is not the weights' SHA-256"),
    (lambda m, d: d.update(version="99"), "names model 'lesion-detector' version '99'"),
    (lambda m, d: m["weights"].update(architecture="lesion-unet"), "architecture 'lesion-detector'"),
    (lambda m, d: m["output"].update(kind="segmentation"), "needs a detection output"),
])
def test_a_package_that_does_not_hold_together_as_the_platform_detector_is_refused_by_name(
    shipped: Path, tmp_path: Path, change: Any, reason: str
) -> None:
    changed = _repacked(tmp_path, shipped, change)
    with pytest.raises(PackageRefused, match=reason):
        verify_package(changed, tmp_path / "verified")


def test_weights_that_are_not_their_manifests_are_not_packed(shipped: Path, tmp_path: Path) -> None:
    weights = tmp_path / "detector.pt"
    shutil.copyfile(shipped, weights)
    shutil.copyfile(shipped.with_suffix(".json"), weights.with_suffix(".json"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(DetectorPackError, match="SHA-256"):
        pack_detector(weights, tmp_path / "x.zip", partner_organization=PLATFORM, price_minor=1, currency="EUR")
    with pytest.raises(DetectorPackError, match="manifest"):
        pack_detector(tmp_path / "absent.pt", tmp_path / "x.zip", partner_organization=PLATFORM, price_minor=1,
                      currency="EUR")


def test_only_the_platforms_administrators_submit_the_platform_detector(
    app: Flask, db_session: Session, demo: DemoSeed, shipped: Path, tmp_path: Path
) -> None:
    partner = demo.users["partner"]
    assert partner.organization is not None
    written = pack_detector(shipped, tmp_path / "d.zip", partner_organization=partner.organization.name,
                            price_minor=1, currency="EUR")
    with pytest.raises(Forbidden, match="platform's administrators"):
        submit_package(db_session, written, partner, Path(app.config["AI_MODELS_DIR"]))


def test_the_detector_comes_in_as_a_package_is_routed_by_the_rules_and_billed_at_its_price(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, shipped: Path, tmp_path: Path
) -> None:
    admin = demo.users["admin"]
    db_session.add(Organization(name=PLATFORM, kind=OrganizationKind.AI_PARTNER))
    db_session.flush()
    written = pack_detector(shipped, tmp_path / "detector.zip", partner_organization=PLATFORM, price_minor=4500,
                            currency="EUR")
    package = submit_package(db_session, written, admin, Path(app.config["AI_MODELS_DIR"]))
    db_session.commit()  # its checks run (inline here) on the reference studies
    db_session.refresh(package)
    assert package.status is PackageStatus.AWAITING_APPROVAL, package.check_report
    # Scored on the held-out set through the package contract, like any detection package.
    held_out = package.check_report["held_out"]
    assert held_out["passed"] and held_out["n_lesions"] > 0
    assert {m["name"] for m in held_out["metrics"]} == {"sensitivity", "fp_per_case", "fp_per_lesion_free_case"}
    assert {c["key"] for c in held_out["claims"]} >= {"froc_sensitivity_at_1fp"}
    assert active_model_version(db_session) is not None  # the seeded version of the same weights

    approve_package(db_session, package.id, admin)
    db_session.commit()
    version = active_model_version(db_session)
    assert version is not None and version.model_package_id == package.id
    assert version.weights_sha256 == package.manifest["files"][shipped.name]
    admin_client = as_role("admin")
    shown = admin_client.get(f"/model-packages/{package.id}").get_data(as_text=True)
    assert 'id="package-runtime"' in shown and "approving it makes it the active detector" in shown
    models_page = admin_client.get("/models").get_data(as_text=True)
    assert f'href="/model-packages/{package.id}"' in models_page and f"model package #{package.id}" in models_page
    with pytest.raises(Conflict, match="active lesion-detector"):
        retire_package(db_session, package.id, admin)
    db_session.rollback()

    study_id = store_study(app, db_session, demo, lambda uid: gate_series.normal_ct(20_019, uid))
    analyse_study_again(db_session, study_id)
    db_session.commit()  # AnalysisCompleted: billing charges the analysis
    report = db_session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))
    assert report is not None
    charge = db_session.scalar(select(ChargeItem).where(ChargeItem.service_reference == f"DiagnosticReport/{report.id}",
                                                        ChargeItem.ai_attributed.is_(True)))
    assert charge is not None
    assert (charge.model_package_id, charge.model_label, charge.total_minor, charge.currency) == (
        package.id, f"lesion-detector {package.version}", 4500, "EUR")

    # Once a rule names it, the detector reads only the studies a rule sends it.
    add_routing_rule(db_session, admin, package_name="lesion-detector", modality="MR")
    db_session.commit()
    other, job = _analysed(app, db_session, demo, 20_020)
    assert job.status is AnalysisStatus.NOT_APPLICABLE
    assert "not routed to lesion-detector" in (job.not_applicable_reason or "")
    other_report = db_session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == other))
    assert other_report is not None and not other_report.findings
    assert db_session.scalar(select(ChargeItem).where(
        ChargeItem.service_reference == f"DiagnosticReport/{other_report.id}", ChargeItem.ai_attributed.is_(True))) is None
    assert db_session.scalar(select(ModelVersion).where(ModelVersion.model_package_id == package.id)) == version

    # A rule that sends it chest CT: it reads the study in the analysis job, never in the sandbox.
    add_routing_rule(db_session, admin, package_name="lesion-detector", modality="CT")
    db_session.commit()
    _, job = _analysed(app, db_session, demo, 20_021)
    assert job.status is AnalysisStatus.COMPLETED and job.model_version_id == version.id
    assert db_session.scalar(select(PackageAnalysis.id).limit(1)) is None


def _analysed(app: Flask, db_session: Session, demo: DemoSeed, seed: int) -> tuple[int, AnalysisJob]:
    """A normal chest CT stored as a study and analysed (its events dispatched): its id and job."""
    study_id = store_study(app, db_session, demo, lambda uid: gate_series.normal_ct(seed, uid))
    analyse_study_again(db_session, study_id)
    db_session.commit()
    job = db_session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    assert job is not None
    return study_id, job


def test_the_detector_is_packed_from_the_command_line_and_a_bad_weights_file_is_one_line(
    app: Flask, shipped: Path, tmp_path: Path
) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["ai", "package", "pack-detector", str(tmp_path / "d.zip"), "--organization", PLATFORM,
                                 "--price-minor", "4500", "--currency", "EUR"])
    assert result.exit_code == 0, result.output
    assert verify_package(tmp_path / "d.zip", tmp_path / "v").manifest["weights"]["file"] == shipped.name
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not weights")
    refused = runner.invoke(args=["ai", "package", "pack-detector", str(tmp_path / "e.zip"), "--weights", str(broken),
                                  "--organization", PLATFORM, "--price-minor", "1", "--currency", "EUR"])
    assert refused.exit_code == 1 and refused.output.strip().splitlines() == [
        f"Error: {broken}: weights and their manifest (broken.json) are needed"]
    assert not (tmp_path / "e.zip").exists()
