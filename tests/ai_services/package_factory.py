"""Partner model packages for tests: a valid tiny classifier, laid out by the platform's own
`write_package`, that each test then breaks in one way."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ai_services.packages import TinyClassifier, write_package


def classifier_manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format_version": 1,
        "name": "nodule-classifier",
        "version": "1.0.0",
        "partner_organization": "Acme Imaging AI",
        "modalities": ["CT"],
        "body_parts": ["CHEST"],
        "input": {"spacing_mm": [1.5, 1.5, 5.0], "size": [64, 64], "channels": 1},
        "output": {"kind": "classification", "classes": ["normal", "abnormal"]},
        "intended_use": "Flags chest CT slices that may hold an abnormality, for a radiologist to review.",
        "validated_metrics": {"auroc": 0.91},
        "price": {"amount_minor": 1200, "currency": "EUR"},
        "partner_share_bp": 7000,
        "weights": {"file": "weights.pt", "format": "state_dict", "architecture": "tiny-classifier",
                    "architecture_args": {"in_channels": 1, "n_classes": 2, "width": 8}},
    }
    manifest.update(overrides)
    return manifest


def classifier_state_dict_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(TinyClassifier(in_channels=1, n_classes=2, width=8).state_dict(), buffer)
    return buffer.getvalue()


def make_classifier_package(tmp_path: Path, *, zipped: bool = True, **overrides: Any) -> Path:
    directory = tmp_path / "src"
    return write_package(directory, classifier_manifest(**overrides), classifier_state_dict_bytes(),
                         zip_to=tmp_path / "package.zip" if zipped else None)


class _Scripted(torch.nn.Module):
    def __init__(self, loops: int, allocate: int) -> None:
        super().__init__()
        self.loops = loops
        self.allocate = allocate
        self.head = torch.nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(1)
        for _ in range(self.loops):
            total = total + 1.0
        if self.allocate > 0:
            total = total + torch.ones(self.allocate).sum()
        return self.head(x.mean(dim=(1, 2, 3)).unsqueeze(1) + total)


def torchscript_bytes(*, loops: int = 0, allocate: int = 0) -> bytes:
    """A TorchScript classifier; `loops` makes it slow, `allocate` (floats) makes it greedy."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_Scripted(loops, allocate)), buffer)
    return buffer.getvalue()


def make_torchscript_package(tmp_path: Path, *, loops: int = 0, allocate: int = 0, **overrides: Any) -> Path:
    manifest = classifier_manifest(weights={"file": "model.ts", "format": "torchscript"}, **overrides)
    return write_package(tmp_path / "src", manifest, torchscript_bytes(loops=loops, allocate=allocate),
                         zip_to=tmp_path / "package.zip")


class _BrightRegions(torch.nn.Module):
    """A detection or segmentation model: the probability that a pixel is foreground is high where
    the first channel (the lung window) shows soft tissue or brighter."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] > self.threshold).float() * 0.9


def map_manifest(kind: str = "detection", **overrides: Any) -> dict[str, Any]:
    """A TorchScript package of `kind` detection or segmentation (a per-pixel probability map)."""
    manifest = classifier_manifest(
        name=f"bright-{kind}", output={"kind": kind},
        intended_use=f"Marks bright regions on chest CT ({kind}), for a radiologist to review.",
        validated_metrics={"sensitivity": 0.8, "dice": 0.7}, price={"amount_minor": 3000, "currency": "EUR"},
        partner_share_bp=6000, weights={"file": "model.ts", "format": "torchscript"},
    )
    manifest.update(overrides)
    return manifest


def make_map_package(tmp_path: Path, kind: str = "detection", threshold: float = 0.5, **overrides: Any) -> Path:
    scripted = torch.jit.script(_BrightRegions(threshold))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return write_package(tmp_path / "src", map_manifest(kind, **overrides), buffer.getvalue(),
                         zip_to=tmp_path / "package.zip")


class _FineThenNot(torch.nn.Module):
    """Behaves on the three reference studies, then crashes or loops on the fourth case it sees in
    one run: only a held-out set of more than three cases gets there."""

    def __init__(self, crash: bool) -> None:
        super().__init__()
        self.crash = crash
        self.calls = 0
        self.head = torch.nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        total = torch.zeros(1)
        if self.calls > 3:
            if self.crash:
                raise RuntimeError("out of cheese")
            for _ in range(100_000_000):
                total = total + 1.0
        return self.head(x.mean(dim=(1, 2, 3)).unsqueeze(1) + total)


def make_fine_then_failing_package(tmp_path: Path, crash: bool) -> Path:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_FineThenNot(crash)), buffer)
    manifest = classifier_manifest(weights={"file": "model.ts", "format": "torchscript"})
    return write_package(tmp_path / "src", manifest, buffer.getvalue())
