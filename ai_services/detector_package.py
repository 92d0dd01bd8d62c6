"""The platform's lesion detector as a model package: the first package through the partner path.

A detector version (weights and the manifest beside them, as training writes them) is laid out in
the partner package format (`ai_services.packages`), with runtime `platform-detector`:

- the weights as a state dict of architecture `lesion-detector` (`network.PackagedLesionUNet`:
  the same parameters, held to the package input contract), and the detector's own manifest
  beside them, hashed like every other file;
- what the package manifest declares is read from the detector's manifest: the modalities and
  body parts of its validated range, the grid it reads on (its `preprocessing`), its channels and
  HU windows, its intended use and held-out metrics;
- the price and the share are the submitter's (the platform's own model: share 0 by default).

From there it goes the way every partner package goes (`package_service`): verified, checked in
the sandbox on the reference studies and evaluated on the held-out set, approved by an
administrator. Approval registers it as the active detector version (`register_approved_detector`);
the analysis job then runs it on whole studies with its calibration and operating point, routed by
the same rules and billed at its own price.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ai_services.inference import manifest_path_for, sha256_of_file
from ai_services.network import CONTEXT_SLICES, DEFAULT_WIDTHS, IN_CHANNELS, WINDOWS
from ai_services.packages import PLATFORM_DETECTOR, write_package

# The package input's matrix (rows, columns): at the detector's 1.25 mm that is 480 mm, a whole
# chest; the sandbox crops or pads the reference and held-out studies to it.
PACKAGE_SIZE: tuple[int, int] = (384, 384)
# What a version without a `preprocessing` grid (v1: read on the scan's own pixels) is declared at:
# the pixel spacing and slice interval of the scans it was trained on.
V1_SPACING_MM: tuple[float, float, float] = (1.5, 1.5, 2.5)
_MAX_VALIDATED_METRICS = 32


class DetectorPackError(ValueError):
    """The weights or their manifest cannot be packed (missing, or not a lesion detector)."""


def package_manifest(detector: dict[str, Any], weights_name: str, *, partner_organization: str,
                     price_minor: int, currency: str, partner_share_bp: int = 0) -> dict[str, Any]:
    """The package manifest of a detector version (its `files` are filled in by `write_package`)."""
    architecture = dict(detector.get("architecture") or {})
    windows = [[float(c), float(w)] for c, w in (architecture.get("windows_hu") or WINDOWS)]
    in_channels = int(architecture.get("in_channels", IN_CHANNELS))
    intended = detector.get("intended_use") or {}
    valid = dict(intended.get("validated_range") or {}) if isinstance(intended, dict) else {}
    summary = str(intended.get("summary", "")) if isinstance(intended, dict) else str(intended)
    if len(summary) < 20:
        summary = ("Flag candidate lesions on axial chest CT for a radiologist's review; every finding needs "
                   "a radiologist's decision.")
    grid = detector.get("preprocessing") or {}
    if grid:
        spacing = [float(grid["in_plane_spacing_mm"])] * 2 + [float(grid["context_offset_mm"])]
    else:
        spacing = list(V1_SPACING_MM)
    metrics = {str(k): float(v) for k, v in sorted(dict(detector.get("heldout_metrics") or {}).items())
               if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        "format_version": 1,
        "name": str(detector.get("model_name") or "lesion-detector"),
        "version": str(detector["version"]),
        "partner_organization": partner_organization,
        "modalities": sorted({str(m).upper() for m in valid.get("modalities") or ["CT"]}),
        "body_parts": sorted({str(b).upper() for b in valid.get("body_parts") or ["CHEST"]}),
        "input": {"spacing_mm": spacing, "size": list(PACKAGE_SIZE), "channels": in_channels,
                  "windows_hu": windows},
        "output": {"kind": "detection"},
        "intended_use": summary[:2000],
        "validated_metrics": dict(list(metrics.items())[:_MAX_VALIDATED_METRICS]) or {"n_scans": 0.0},
        "price": {"amount_minor": int(price_minor), "currency": currency.upper()},
        "partner_share_bp": int(partner_share_bp),
        "weights": {"file": weights_name, "format": "state_dict", "architecture": "lesion-detector",
                    "architecture_args": {
                        "in_channels": in_channels,
                        "widths": [int(w) for w in architecture.get("widths", DEFAULT_WIDTHS)],
                        "n_windows": len(windows)}},
        "runtime": PLATFORM_DETECTOR,
        "files": {},
    }


def pack_detector(weights_path: Path, dest: Path, *, partner_organization: str, price_minor: int, currency: str,
                  partner_share_bp: int = 0) -> Path:
    """Write the package of the detector version at `weights_path` to `dest` (a zip file)."""
    weights_path = Path(weights_path)
    manifest_path = manifest_path_for(weights_path)
    if not weights_path.is_file() or not manifest_path.is_file():
        raise DetectorPackError(f"{weights_path}: weights and their manifest ({manifest_path.name}) are needed")
    try:
        detector = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetectorPackError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(detector, dict) or "version" not in detector:
        raise DetectorPackError(f"{manifest_path}: not a lesion detector's manifest (no version)")
    if int(dict(detector.get("architecture") or {}).get("context_slices", CONTEXT_SLICES)) != CONTEXT_SLICES:
        raise DetectorPackError(f"{manifest_path}: only {CONTEXT_SLICES}-slice detectors are packed")
    if detector.get("sha256") != sha256_of_file(weights_path):
        raise DetectorPackError(f"{weights_path}: its SHA-256 is not the one its manifest records")
    manifest = package_manifest(detector, weights_path.name, partner_organization=partner_organization,
                                price_minor=price_minor, currency=currency, partner_share_bp=partner_share_bp)
    with tempfile.TemporaryDirectory(prefix="detector-package-") as work:
        layout = Path(work) / "package"
        layout.mkdir()
        shutil.copyfile(manifest_path, layout / manifest_path.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return write_package(layout, manifest, weights_path, zip_to=dest)
