"""The partner model package format: a valid package verifies; a malformed, tampered or
over-limit one is refused with its reason."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from ai_services.packages import (
    DEFAULT_LIMITS,
    MANIFEST_NAME,
    PackageLimits,
    PackageRefused,
    verify_package,
    write_package,
)
from tests.ai_services.package_factory import (
    classifier_manifest,
    classifier_state_dict_bytes,
    make_classifier_package,
)


def refusal(source: Path, dest: Path, limits: PackageLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(PackageRefused) as caught:
        verify_package(source, dest, limits)
    assert not dest.exists(), "a refused package leaves nothing behind"
    return str(caught.value)


def rezip(tmp_path: Path, files: dict[str, bytes], name: str = "bad.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def contents(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("zipped", [True, False])
def test_a_valid_package_verifies_with_its_digest(tmp_path: Path, zipped: bool) -> None:
    package = make_classifier_package(tmp_path, zipped=zipped)
    verified = verify_package(package, tmp_path / "out")
    assert (verified.name, verified.version) == ("nodule-classifier", "1.0.0")
    assert verified.manifest["output"]["kind"] == "classification"
    assert verified.weights_path.is_file()
    assert len(verified.digest) == 64
    assert set(verified.manifest["files"]) == {"weights.pt"}


def test_a_tampered_weights_file_is_refused(tmp_path: Path) -> None:
    files = contents(make_classifier_package(tmp_path))
    files["weights.pt"] = classifier_state_dict_bytes(seed=1)
    reason = refusal(rezip(tmp_path, files), tmp_path / "out")
    assert "weights.pt: SHA-256" in reason and "does not match" in reason


def test_a_file_the_manifest_does_not_hash_is_refused(tmp_path: Path) -> None:
    files = contents(make_classifier_package(tmp_path))
    files["extra.py"] = b"import os\n"
    assert "not listed (and hashed)" in refusal(rezip(tmp_path, files), tmp_path / "out")


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/evil", "a/../../b", "C:/evil"])
def test_path_traversal_in_the_zip_is_refused(tmp_path: Path, member: str) -> None:
    files = contents(make_classifier_package(tmp_path))
    files[member] = b"x"
    reason = refusal(rezip(tmp_path, files), tmp_path / "out")
    assert "unsafe path" in reason and repr(member) in reason
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("members", [["."], ["notes", "notes/inner"], ["notes/inner", "notes"]])
def test_member_names_that_cannot_be_unpacked_are_refused_not_crashed_on(tmp_path: Path, members: list[str]) -> None:
    """A member named like the package's own folder, or a file that another member needs as a
    folder: a refusal with the reason, not an OSError out of the platform."""
    files = contents(make_classifier_package(tmp_path))
    for member in members:
        files[member] = b"x"
    reason = refusal(rezip(tmp_path, files), tmp_path / "out")
    assert "unsafe path" in reason or "cannot be unpacked" in reason


def test_a_link_in_a_directory_package_is_refused(tmp_path: Path) -> None:
    directory = make_classifier_package(tmp_path, zipped=False)
    os.symlink("/etc/passwd", directory / "passwd")
    assert "links are not allowed" in refusal(directory, tmp_path / "out")


def test_unknown_keys_and_bad_values_are_named(tmp_path: Path) -> None:
    package = make_classifier_package(tmp_path, surprise=True, partner_share_bp=12000,
                                      price={"amount_minor": 12.5, "currency": "EUR"})
    reason = refusal(package, tmp_path / "out")
    assert "'surprise' was unexpected" in reason
    assert "partner_share_bp" in reason
    assert "price/amount_minor" in reason


def test_a_classifier_must_name_its_classes(tmp_path: Path) -> None:
    reason = refusal(make_classifier_package(tmp_path, output={"kind": "classification"}), tmp_path / "out")
    assert "output" in reason and "classes" in reason


def test_a_positive_class_must_be_one_of_the_classes_of_a_classifier(tmp_path: Path) -> None:
    named = make_classifier_package(tmp_path / "ok", output={"kind": "classification", "classes": ["normal", "abnormal"],
                                                             "positive_class": "abnormal"})
    assert verify_package(named, tmp_path / "ok-out").manifest["output"]["positive_class"] == "abnormal"
    stranger = make_classifier_package(tmp_path / "a", output={"kind": "classification", "classes": ["normal", "abnormal"],
                                                               "positive_class": "lesion"})
    with pytest.raises(PackageRefused, match=r"output.positive_class 'lesion' is not one of output.classes "
                                             r"\(normal, abnormal\)"):
        verify_package(stranger, tmp_path / "a-out")
    detector = make_classifier_package(tmp_path / "b", output={"kind": "detection", "positive_class": "lesion"})
    with pytest.raises(PackageRefused, match="output.positive_class is for a classification; this output is a detection"):
        verify_package(detector, tmp_path / "b-out")


def test_a_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    files = contents(make_classifier_package(tmp_path))
    files[MANIFEST_NAME] = b"{not json"
    assert "not valid JSON" in refusal(rezip(tmp_path, files), tmp_path / "out")


def test_a_package_without_a_manifest_is_refused(tmp_path: Path) -> None:
    assert "no manifest.json" in refusal(rezip(tmp_path, {"weights.pt": b"x"}), tmp_path / "out")


def test_something_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.tar"
    path.write_bytes(b"not a zip at all")
    assert "not a zip file or a directory" in refusal(path, tmp_path / "out")


def test_an_over_limit_package_is_refused_by_size_and_by_file_count(tmp_path: Path) -> None:
    package = make_classifier_package(tmp_path)
    assert "package too large" in refusal(package, tmp_path / "out", PackageLimits(max_total_bytes=1000))
    assert "too many files" in refusal(package, tmp_path / "out", PackageLimits(max_files=1))


def test_a_zip_that_lies_about_its_sizes_is_cut_off(tmp_path: Path) -> None:
    # A zip bomb's central directory may claim small sizes; what is written is what counts.
    package = rezip(tmp_path, {"manifest.json": b"{}", "big.bin": b"\0" * 50_000})
    raw = bytearray(package.read_bytes())
    # Patch the central directory's uncompressed size of big.bin to 10 bytes.
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    package.write_bytes(bytes(raw))
    assert "damaged or unsupported zip" in refusal(package, tmp_path / "out", PackageLimits(max_total_bytes=20_000))


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /tmp/partner19-pwned",))


def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = Path("/tmp/partner19-pwned")
    marker.unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save({"head.weight": _RunsCode()}, buffer)
    package = write_package(tmp_path / "src", classifier_manifest(), buffer.getvalue(), zip_to=tmp_path / "p.zip")
    assert "not a plain tensor state dict" in refusal(package, tmp_path / "out")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_declared_architecture_are_refused(tmp_path: Path) -> None:
    manifest = classifier_manifest(weights={"file": "weights.pt", "format": "state_dict",
                                            "architecture": "tiny-classifier",
                                            "architecture_args": {"in_channels": 1, "n_classes": 5}})
    package = write_package(tmp_path / "src", manifest, classifier_state_dict_bytes(), zip_to=tmp_path / "p.zip")
    assert "does not fit architecture 'tiny-classifier'" in refusal(package, tmp_path / "out")


@pytest.mark.parametrize("args", [{"width": 200_000}, {"n_classes": 10**9}, {"width": -3}, {"widths": "abc"}])
def test_architecture_arguments_cannot_make_the_platform_build_a_giant_or_broken_model(
    tmp_path: Path, args: dict[str, object]
) -> None:
    """The declared architecture is sized from its arguments before anything is allocated: numbers
    that would make a model far larger than any package may be, or none at all, are refused by
    name (the weights would not fit anyway, but building the model first would exhaust memory)."""
    architecture = "lesion-unet" if "widths" in args else "tiny-classifier"
    manifest = classifier_manifest(weights={"file": "weights.pt", "format": "state_dict",
                                            "architecture": architecture, "architecture_args": args})
    package = write_package(tmp_path / "src", manifest, classifier_state_dict_bytes(), zip_to=tmp_path / "p.zip")
    assert f"architecture_args do not build {architecture!r}" in refusal(package, tmp_path / "out")


def test_an_architecture_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    manifest = classifier_manifest(weights={"file": "weights.pt", "format": "state_dict", "architecture": "resnet-152"})
    package = write_package(tmp_path / "src", manifest, classifier_state_dict_bytes(), zip_to=tmp_path / "p.zip")
    reason = refusal(package, tmp_path / "out")
    assert "unknown architecture 'resnet-152'" in reason and "tiny-classifier" in reason


def test_the_manifest_hashes_every_file_it_lists(tmp_path: Path) -> None:
    directory = make_classifier_package(tmp_path, zipped=False)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["files"]["weights.pt"] = "0" * 64
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "does not match the manifest's" in refusal(directory, tmp_path / "out")
