"""Partner model packages: the format, and the verification that refuses a bad one before anyone
runs it.

A package is a zip (or a directory) holding exactly:

- `manifest.json`: what the model is and what it costs (validated against `MANIFEST_SCHEMA`;
  unknown keys are refused, so a typo never passes as an ignored field), and under `files` the
  SHA-256 of every other file in the package;
- the weights the manifest names: TorchScript (`format: torchscript`, run only in the sandbox:
  a TorchScript archive is code) or a state dict (`format: state_dict`) for an architecture from
  `ARCHITECTURES`, loaded with `torch.load(weights_only=True)` so a pickle that would run code is
  refused instead of run;
- nothing else the manifest does not hash.

`verify_package` unpacks into a directory of the platform's (refusing absolute paths, `..`,
links and anything over `PackageLimits`) and returns a `VerifiedPackage`; every refusal is a
`PackageRefused` whose message names the reason and the offending value. The module is pure: no
Flask, no database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema_rs
import torch
from torch import nn

from ai_services.network import DEFAULT_WIDTHS, IN_CHANNELS, WINDOWS, LesionUNet, PackagedLesionUNet

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# The runtime of the platform's own lesion detector as a package: a state dict of architecture
# `lesion-detector` and, beside it (the weights' name with `.json`), the detector's own manifest
# (calibration, the grid it reads on, its operating point and validated range) that
# `LesionDetector.load` reads. Its weights are the reviewed architecture's numbers only, loaded with
# `weights_only`, so the platform runs it in-process on whole studies; the sandbox still checks it
# on the reference studies and the held-out set through the package input contract like any other.
PLATFORM_DETECTOR = "platform-detector"
OUTPUT_KINDS = ("detection", "classification", "segmentation")
_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,79}$"
_SHA256_PATTERN = r"^[0-9a-f]{64}$"
_FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99}){0,3}$"

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Partner model package manifest",
    "type": "object",
    "additionalProperties": False,
    "required": ["format_version", "name", "version", "partner_organization", "modalities", "body_parts",
                 "input", "output", "intended_use", "validated_metrics", "price", "partner_share_bp",
                 "weights", "files"],
    "properties": {
        "format_version": {"const": 1},
        "name": {"type": "string", "pattern": _NAME_PATTERN},
        "version": {"type": "string", "pattern": r"^[0-9A-Za-z][0-9A-Za-z._-]{0,39}$"},
        "partner_organization": {"type": "string", "minLength": 2, "maxLength": 200},
        # DICOM Modality (0008,0060) and Body Part Examined (0018,0015) values it applies to.
        "modalities": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"type": "string", "pattern": r"^[A-Z]{2,4}$"}},
        "body_parts": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"type": "string", "pattern": r"^[A-Z][A-Z0-9 ]{1,15}$"}},
        "input": {
            "type": "object", "additionalProperties": False,
            "required": ["spacing_mm", "size", "channels"],
            "properties": {
                # (row, column, slice) spacing the model was validated at.
                "spacing_mm": {"type": "array", "minItems": 3, "maxItems": 3,
                               "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 50}},
                "size": {"type": "array", "minItems": 2, "maxItems": 2,
                         "items": {"type": "integer", "minimum": 16, "maximum": 1024}},
                "channels": {"type": "integer", "minimum": 1, "maximum": 16},
                # (centre, width) HU windows each slice is shown through; channels = slices x windows.
                "windows_hu": {"type": "array", "minItems": 1, "maxItems": 4,
                               "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                         "items": {"type": "number", "minimum": -2000, "maximum": 5000}}},
            },
        },
        "output": {
            "type": "object", "additionalProperties": False,
            "required": ["kind"],
            "properties": {
                "kind": {"enum": list(OUTPUT_KINDS)},
                # classification: one name per logit, in order.
                "classes": {"type": "array", "minItems": 2, "maxItems": 32, "uniqueItems": True,
                            "items": {"type": "string", "minLength": 1, "maxLength": 64}},
                # classification: the class that means "abnormal", which the held-out evaluation
                # scores (AUROC, sensitivity, specificity); one of `classes`.
                "positive_class": {"type": "string", "minLength": 1, "maxLength": 64},
            },
            "if": {"properties": {"kind": {"const": "classification"}}},
            "then": {"required": ["kind", "classes"]},
        },
        "intended_use": {"type": "string", "minLength": 20, "maxLength": 2000},
        "validated_metrics": {"type": "object", "minProperties": 1, "maxProperties": 32,
                              "additionalProperties": {"type": "number"}},
        "price": {
            "type": "object", "additionalProperties": False, "required": ["amount_minor", "currency"],
            "properties": {
                "amount_minor": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
                "currency": {"type": "string", "pattern": r"^[A-Z]{3}$"},
            },
        },
        # The partner's part of each analysis's price, in basis points (7000 = 70%).
        "partner_share_bp": {"type": "integer", "minimum": 0, "maximum": 10_000},
        "weights": {
            "type": "object", "additionalProperties": False, "required": ["file", "format"],
            "properties": {
                "file": {"type": "string", "pattern": _FILE_PATTERN},
                "format": {"enum": ["torchscript", "state_dict"]},
                "architecture": {"type": "string", "pattern": _NAME_PATTERN},
                "architecture_args": {"type": "object", "maxProperties": 16},
            },
            "if": {"properties": {"format": {"const": "state_dict"}}},
            "then": {"required": ["file", "format", "architecture"]},
        },
        # How the platform runs the package on a study: "sandbox" (the default: a partner's code, in
        # a limited child process, on the centre slices of the input contract) or "platform-detector"
        # (the platform's own calibrated lesion detector, `ai_services.inference.LesionDetector`, in
        # the analysis job on every slice; see `PLATFORM_DETECTOR`).
        "runtime": {"enum": ["sandbox", PLATFORM_DETECTOR]},
        "files": {"type": "object", "minProperties": 1, "maxProperties": 16,
                  "propertyNames": {"pattern": _FILE_PATTERN},
                  "additionalProperties": {"type": "string", "pattern": _SHA256_PATTERN}},
    },
}
_VALIDATOR = jsonschema_rs.validator_for(MANIFEST_SCHEMA)


class TinyClassifier(nn.Module):
    """A small image classifier: two strided convolutions, global max pooling (a small bright spot
    anywhere counts), a linear head."""

    def __init__(self, in_channels: int = 1, n_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Linear(width * 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return logits


def _unet_widths(args: dict[str, Any]) -> tuple[int, int, int, int]:
    given = [int(w) for w in args.get("widths", DEFAULT_WIDTHS)]
    if len(given) != 4:
        raise PackageRefused(f"architecture_args.widths must have 4 entries, got {given}")
    return given[0], given[1], given[2], given[3]


def _lesion_unet(args: dict[str, Any]) -> nn.Module:
    return LesionUNet(in_channels=int(args.get("in_channels", IN_CHANNELS)), widths=_unet_widths(args))


def _packaged_lesion_unet(args: dict[str, Any]) -> nn.Module:
    return PackagedLesionUNet(in_channels=int(args.get("in_channels", IN_CHANNELS)), widths=_unet_widths(args),
                              n_windows=int(args.get("n_windows", len(WINDOWS))))


def _tiny_classifier(args: dict[str, Any]) -> nn.Module:
    return TinyClassifier(in_channels=int(args.get("in_channels", 1)), n_classes=int(args.get("n_classes", 2)),
                          width=int(args.get("width", 8)))


# The architectures a state-dict package may declare: code the platform reviewed, built from
# plain numbers. A partner with another architecture sends TorchScript.
ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "lesion-unet": _lesion_unet,
    "lesion-detector": _packaged_lesion_unet,
    "tiny-classifier": _tiny_classifier,
}


class PackageRefused(ValueError):
    """The package is malformed, tampered with or over a limit; the message says which and why."""


@dataclass(frozen=True)
class PackageLimits:
    max_total_bytes: int = 64 * 1024 * 1024
    max_files: int = 16
    max_manifest_bytes: int = 64 * 1024


DEFAULT_LIMITS = PackageLimits()


@dataclass(frozen=True)
class VerifiedPackage:
    """A package that passed verification, unpacked at `root` (which the caller owns)."""

    root: Path
    manifest: dict[str, Any]
    # SHA-256 of manifest.json as sent: it covers every other file through their hashes.
    digest: str
    total_bytes: int

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def weights_path(self) -> Path:
        return self.root / str(self.manifest["weights"]["file"])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_package(source: Path, dest: Path, limits: PackageLimits = DEFAULT_LIMITS) -> VerifiedPackage:
    """Unpack `source` (a zip file or a directory) into the empty or absent directory `dest` and
    verify it; raise `PackageRefused` with the reason otherwise (`dest` is then removed)."""
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if source.is_dir():
            total = _copy_directory(source, dest, limits)
        elif zipfile.is_zipfile(source):
            try:
                total = _extract_zip(source, dest, limits)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise PackageRefused(f"{source.name}: a damaged or unsupported zip ({exc})") from exc
        else:
            raise PackageRefused(f"{source.name}: not a zip file or a directory")
        return _verify_unpacked(dest, total, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _safe_member_name(name: str) -> str:
    path = PurePosixPath(name)
    if (name.startswith("/") or "\\" in name or ".." in path.parts or not path.parts
            or ":" in path.parts[0]):
        raise PackageRefused(f"unsafe path in package: {name!r} (absolute, drive or '..')")
    return str(path)


def _extract_zip(source: Path, dest: Path, limits: PackageLimits) -> int:
    with zipfile.ZipFile(source) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > limits.max_files:
            raise PackageRefused(f"too many files: {len(members)} (limit {limits.max_files})")
        declared = sum(info.file_size for info in members)
        if declared > limits.max_total_bytes:
            raise PackageRefused(f"package too large: {declared} bytes unpacked (limit {limits.max_total_bytes})")
        total = 0
        for info in members:
            name = _safe_member_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PackageRefused(f"links are not allowed in a package: {name!r}")
            target = dest / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # Count what is actually written: a zip's declared sizes can lie (a zip bomb).
                with archive.open(info) as src, target.open("wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        total += len(chunk)
                        if total > limits.max_total_bytes:
                            raise PackageRefused(f"package too large: over {limits.max_total_bytes} bytes unpacked")
                        out.write(chunk)
            except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
                # A member named like a folder another member needs (or the other way round).
                raise PackageRefused(f"{name!r} cannot be unpacked: {exc.strerror}") from exc
    return total


def _copy_directory(source: Path, dest: Path, limits: PackageLimits) -> int:
    files = []
    for path in sorted(source.rglob("*")):
        if path.is_symlink():
            raise PackageRefused(f"links are not allowed in a package: {path.relative_to(source).as_posix()!r}")
        if path.is_file():
            files.append(path)
    if len(files) > limits.max_files:
        raise PackageRefused(f"too many files: {len(files)} (limit {limits.max_files})")
    total = sum(path.stat().st_size for path in files)
    if total > limits.max_total_bytes:
        raise PackageRefused(f"package too large: {total} bytes (limit {limits.max_total_bytes})")
    for path in files:
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return total


def check_manifest(manifest: Any) -> dict[str, Any]:
    """Validate a parsed manifest against `MANIFEST_SCHEMA`; every error in one message."""
    if not isinstance(manifest, dict):
        raise PackageRefused("manifest.json must hold a JSON object")
    errors = sorted(
        f"{'/'.join(str(p) for p in error.instance_path) or '(top level)'}: {error.message}"
        for error in _VALIDATOR.iter_errors(manifest)
    )
    if errors:
        raise PackageRefused("manifest does not match the schema: " + "; ".join(errors))
    windows = manifest["input"].get("windows_hu") or [[-500, 1500]]
    if manifest["input"]["channels"] % len(windows):
        raise PackageRefused(f"input.channels {manifest['input']['channels']} is not a whole number of slices "
                             f"times {len(windows)} HU windows")
    output = manifest["output"]
    if "positive_class" in output:
        if output["kind"] != "classification":
            raise PackageRefused(f"output.positive_class is for a classification; this output is a {output['kind']}")
        if output["positive_class"] not in output["classes"]:
            raise PackageRefused(f"output.positive_class {output['positive_class']!r} is not one of output.classes "
                                 f"({', '.join(output['classes'])})")
    weights = manifest["weights"]
    if weights["file"] not in manifest["files"]:
        raise PackageRefused(f"weights file {weights['file']!r} is not listed under files")
    if weights["format"] == "state_dict" and weights["architecture"] not in ARCHITECTURES:
        raise PackageRefused(f"unknown architecture {weights['architecture']!r}; "
                             f"allowed: {', '.join(sorted(ARCHITECTURES))} (or send TorchScript)")
    if manifest.get("runtime") == PLATFORM_DETECTOR:
        if manifest["output"]["kind"] != "detection" or weights["format"] != "state_dict" \
                or weights.get("architecture") != "lesion-detector":
            raise PackageRefused(f"runtime {PLATFORM_DETECTOR!r} needs a detection output and a state dict of "
                                 "architecture 'lesion-detector'")
        if detector_manifest_name(manifest) not in manifest["files"]:
            raise PackageRefused(f"runtime {PLATFORM_DETECTOR!r} needs the detector's manifest "
                                 f"{detector_manifest_name(manifest)!r} beside its weights, listed under files")
    return manifest


def is_platform_detector(manifest: dict[str, Any]) -> bool:
    return manifest.get("runtime") == PLATFORM_DETECTOR


def detector_manifest_name(manifest: dict[str, Any]) -> str:
    """Where a platform detector package keeps the detector's own manifest: beside its weights, as
    `ai_services.inference.manifest_path_for` looks for it."""
    return str(PurePosixPath(str(manifest["weights"]["file"])).with_suffix(".json"))


def _check_detector_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """The detector manifest of a platform detector package describes these very weights, under
    the package's own name and version (the model registry keys versions by them)."""
    path = root / detector_manifest_name(manifest)
    try:
        detector = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageRefused(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(detector, dict):
        raise PackageRefused(f"{path.name} must hold a JSON object")
    if detector.get("sha256") != manifest["files"][str(manifest["weights"]["file"])]:
        raise PackageRefused(f"{path.name}: its sha256 {detector.get('sha256')!r} is not the weights' SHA-256")
    named = (str(detector.get("model_name") or ""), str(detector.get("version") or ""))
    if named != (manifest["name"], manifest["version"]):
        raise PackageRefused(f"{path.name} names model {named[0]!r} version {named[1]!r}; the package is "
                             f"{manifest['name']!r} version {manifest['version']!r}")


def _verify_unpacked(root: Path, total: int, limits: PackageLimits) -> VerifiedPackage:
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageRefused(f"no {MANIFEST_NAME} at the top of the package")
    raw = manifest_path.read_bytes()
    if len(raw) > limits.max_manifest_bytes:
        raise PackageRefused(f"{MANIFEST_NAME} too large: {len(raw)} bytes (limit {limits.max_manifest_bytes})")
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageRefused(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    manifest = check_manifest(parsed)

    present = {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()} - {MANIFEST_NAME}
    listed = set(manifest["files"])
    if missing := sorted(listed - present):
        raise PackageRefused(f"files listed in the manifest are missing: {', '.join(missing)}")
    if unlisted := sorted(present - listed):
        raise PackageRefused(f"files not listed (and hashed) in the manifest: {', '.join(unlisted)}")
    for name in sorted(listed):
        actual = sha256_of(root / name)
        if actual != manifest["files"][name]:
            raise PackageRefused(f"{name}: SHA-256 {actual} does not match the manifest's {manifest['files'][name]}")

    if is_platform_detector(manifest):
        _check_detector_manifest(root, manifest)
    package = VerifiedPackage(root=root, manifest=manifest, digest=hashlib.sha256(raw).hexdigest(), total_bytes=total)
    if manifest["weights"]["format"] == "state_dict":
        build_state_dict_model(manifest, package.weights_path)
    return package


def build_state_dict_model(manifest: dict[str, Any], weights_path: Path) -> nn.Module:
    """The declared architecture with the package's weights, loaded without unpickling code."""
    weights = manifest["weights"]
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only raises UnpicklingError, RuntimeError... for anything not plain
        raise PackageRefused(f"{weights['file']}: not a plain tensor state dict ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PackageRefused(f"{weights['file']}: a state dict must map parameter names to tensors")
    model = _build_architecture(weights["architecture"], dict(weights.get("architecture_args", {})),
                                _tensor_bytes(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PackageRefused(f"{weights['file']} does not fit architecture {weights['architecture']!r}: "
                             f"{str(exc).splitlines()[0][:300]}") from exc
    return model.eval()


def _tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _build_architecture(name: str, args: dict[str, Any], weights_bytes: int) -> nn.Module:
    """The allow-listed architecture built from `args`, sized first on the meta device (nothing
    allocated): arguments that would make it larger than the weights that must fill it are
    refused before a byte is spent, as are arguments that build nothing."""
    build = ARCHITECTURES[name]
    try:
        with torch.device("meta"):
            shape = build(args)
        needed = sum(p.numel() * p.element_size() for p in [*shape.parameters(), *shape.buffers()])
        if needed > max(weights_bytes, 1) * 2:
            raise ValueError(f"they make a model of {needed} bytes for {weights_bytes} bytes of weights")
        return build(args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise PackageRefused(f"architecture_args do not build {name!r}: {str(exc).splitlines()[0][:300]}") from exc


def write_package(directory: Path, manifest: dict[str, Any], weights: Path | bytes, *,
                  zip_to: Path | None = None) -> Path:
    """Lay out a package (for partners' tooling, the built-in packages and tests): copy the weights
    in, hash every file into the manifest, and optionally zip it. Returns the package's path."""
    directory.mkdir(parents=True, exist_ok=True)
    weights_file = directory / str(manifest["weights"]["file"])
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(weights, bytes):
        weights_file.write_bytes(weights)
    elif weights.resolve() != weights_file.resolve():
        shutil.copyfile(weights, weights_file)
    files = {path.relative_to(directory).as_posix(): sha256_of(path)
             for path in sorted(directory.rglob("*")) if path.is_file() and path.name != MANIFEST_NAME}
    (directory / MANIFEST_NAME).write_text(json.dumps({**manifest, "files": files}, indent=2) + "\n")
    if zip_to is None:
        return directory
    with zipfile.ZipFile(zip_to, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return zip_to
