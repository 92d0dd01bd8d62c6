"""The second model package, made in the project: a slice classifier ("does this axial chest CT
slice hold a lesion?") trained on synthetic phantoms in well under a minute of CPU, packed in the
partner package format so that it goes through the same submission, checks and approval as any
partner's model. It exists to show that a package of another output kind (classification) works
beside the lesion detector; it is not a clinical model.

Reproduce the package: `python -m ai_services.slice_classifier --out DIR [--seed 0]`; the same seed
gives the same weights, byte for byte (one thread, seeded generators).

Its input is the platform's package input contract (`ai_services.sandbox`): one 64 x 64 slice at
6 mm pixels through the lung window, scaled to 0..1.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ai_services.packages import TinyClassifier, write_package
from synthetic.phantoms import make_ct_phantom

logger = logging.getLogger(__name__)

NAME = "slice-classifier"
SIZE = 64
PIXEL_MM = 6.0
SLICE_MM = 5.0
LUNG_WINDOW = (-500.0, 1500.0)
TRAIN_SEEDS = range(700_000, 700_024)
HELDOUT_SEEDS = range(710_000, 710_008)
MIN_LESION_PIXELS = 3


@dataclass(frozen=True)
class TrainedClassifier:
    package: Path
    auroc: float
    seconds: float


def slices_and_labels(seeds: range) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 64, 64) windowed slices and whether each shows a lesion."""
    images, labels = [], []
    centre, width = LUNG_WINDOW
    for seed in seeds:
        phantom = make_ct_phantom(seed, n_slices=24, size=SIZE, pixel_spacing_mm=PIXEL_MM, slice_thickness_mm=SLICE_MM)
        volume = np.clip((phantom.volume_hu.astype(np.float32) - (centre - width / 2)) / width, 0.0, 1.0)
        images.append(volume[:, None])
        # A lesion the 6 mm pixels can show: at least MIN_LESION_PIXELS of the slice (~10 mm across).
        labels.append(phantom.lesion_mask.reshape(phantom.lesion_mask.shape[0], -1).sum(axis=1) >= MIN_LESION_PIXELS)
    return np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int64)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (ties counted half)."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return float(greater / (len(positives) * len(negatives)))


def train(seed: int = 0, epochs: int = 10) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    images, labels = slices_and_labels(TRAIN_SEEDS)
    model = TinyClassifier(in_channels=1, n_classes=2, width=8)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    weight = torch.tensor([1.0, float((labels == 0).sum()) / max(1, int((labels == 1).sum()))])
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 32):
            batch = order[start:start + 32]
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    held_images, held_labels = slices_and_labels(HELDOUT_SEEDS)
    with torch.no_grad():
        scores = torch.softmax(model(torch.from_numpy(held_images)), dim=1)[:, 1].numpy()
    return model, auroc(scores, held_labels)


def manifest(held_out_auroc: float) -> dict[str, Any]:
    return {
        "format_version": 1,
        "name": NAME,
        "version": "1.0.0",
        "partner_organization": "Acme Imaging AI",
        "modalities": ["CT"],
        "body_parts": ["CHEST"],
        "input": {"spacing_mm": [PIXEL_MM, PIXEL_MM, SLICE_MM], "size": [SIZE, SIZE], "channels": 1,
                  "windows_hu": [list(LUNG_WINDOW)]},
        "output": {"kind": "classification", "classes": ["no lesion", "lesion"], "positive_class": "lesion"},
        "intended_use": "Demonstration only: says whether a synthetic chest CT slice shows a lesion of about 10 mm "
                        "or more; "
                        "trained and validated on the project's synthetic phantoms.",
        "validated_metrics": {"slice_auroc_synthetic_heldout": round(held_out_auroc, 4)},
        "price": {"amount_minor": 900, "currency": "EUR"},
        "partner_share_bp": 6000,
        "weights": {"file": "weights.pt", "format": "state_dict", "architecture": "tiny-classifier",
                    "architecture_args": {"in_channels": 1, "n_classes": 2, "width": 8}},
    }


def build_package(out_dir: Path, seed: int = 0) -> TrainedClassifier:
    """Train and write `<out_dir>/slice-classifier-1.0.0.zip` (and its unpacked directory)."""
    started = time.monotonic()
    model, held_out = train(seed)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    out_dir.mkdir(parents=True, exist_ok=True)
    package = write_package(out_dir / f"{NAME}-1.0.0", manifest(held_out), buffer.getvalue(),
                            zip_to=out_dir / f"{NAME}-1.0.0.zip")
    return TrainedClassifier(package, held_out, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = build_package(args.out, args.seed)
    print(f"{result.package}: held-out slice AUROC {result.auroc:.3f} ({result.seconds:.0f} s)")


if __name__ == "__main__":
    main()
