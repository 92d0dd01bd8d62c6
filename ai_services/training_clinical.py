"""Training the grid-independent lesion detector (v2) for clinical CT grids.

v1 learned one grid (256 x 256 at 1.5 mm, 5 mm slices) and failed off it (issue 15). v2 reads
every scan on a physical grid (``inference.PhysicalGrid``: slices resampled to 1.25 mm pixels,
neighbours 2.5 mm above and below), and is trained on scans drawn at random clinical grids:

- pixel spacing 0.5-1.0 mm on a 512 matrix, slice thickness 0.625-5 mm, soft and sharp kernels,
  with and without contrast, from ``synthetic.clinical_phantoms`` (ribs, spine, scapulae, sternum,
  heart, contrast vessels, breathing blur);
- a quarter from v1's generator (``synthetic.phantoms``) on random grids, so what v1 found is
  still found.

Patches are drawn half around lesion voxels, a fifth on bone (hard negatives: v1 flagged ribs at
0.99) and the rest anywhere in the body. The training step runs where torch finds a GPU, else on
the CPU; ``prepare_scan`` is the same preprocessing the detector applies at inference.

Calibration, the candidate threshold and the held-out metrics come after training, on CPU, from
seeds that never fed training (``finish``): calibration in mm^3 on validation scans of both
generators at clinical grids; held-out metrics on scans of the training generators with fresh
seeds. The independent evaluation is ``hospital ai evaluate`` (``ai_services.evaluation``).

Reproduce (see ai_services/weights/README.md):

    python -m ai_services.training_clinical train --out /tmp/v2 --scans 320 --minutes 6
    python -m ai_services.training_clinical finish --state /tmp/v2/lesion-detector-v2.state.pt \\
        --out ai_services/weights
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ai_services.inference import (
    Calibration,
    Detection,
    LesionDetector,
    PhysicalGrid,
    label_components_3d,
    manifest_path_for,
    physical_context,
    resample_in_plane,
    sha256_of_file,
    window_hu,
)
from ai_services.network import IN_CHANNELS, WINDOWS, LesionUNet, count_parameters
from ai_services.training import (
    GRID_TRAIN_SEEDS,
    HELDOUT_SEED_BASE,
    VALIDATION_SEED_BASE,
    EvaluationMetrics,
    TrainingError,
    calibration_from_runs,
    code_version,
    detection_loss,
    froc_curve,
    metrics_from_runs,
    run_on_phantoms,
    sensitivity_at_fp_rate,
)
from synthetic.phantoms import Phantom, make_ct_phantom

logger = logging.getLogger(__name__)

MODEL_NAME = "lesion-detector"
MODEL_VERSION = "2"
GRID = PhysicalGrid(in_plane_mm=1.25, context_mm=2.5)
WIDTHS: tuple[int, int, int, int] = (8, 16, 48, 96)
PATCH = 128
THICKNESSES_MM = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
V1_GENERATOR_SHARE = 0.25
CANDIDATE_THRESHOLD = 0.3
REPORT_FP_PER_SCAN = 1.0
# Seeds: training 200 000.., validation (calibration, threshold) 10 000.. of each generator,
# held-out 20 000.. (v1's blocks, other generator for the clinical scans) - none in the evaluation
# generator's test block (50 000..) or retraining's (100 000..).
TRAIN_SEED_BASE = GRID_TRAIN_SEEDS.start


@dataclass(frozen=True)
class ScanSpec:
    """Which generator and grid a seed's scan is drawn on."""

    seed: int
    generator: str  # "clinical" | "v1"
    pixel_spacing_mm: float
    slice_thickness_mm: float
    size: int
    z_extent_mm: float


def draw_spec(seed: int, *, v1_share: float = V1_GENERATOR_SHARE) -> ScanSpec:
    rng = np.random.default_rng([seed, 2])
    thickness = float(rng.choice(THICKNESSES_MM))
    if rng.random() < v1_share:
        spacing = float(rng.uniform(0.6, 1.6))
        size = int(min(512, 32 * round(384 / spacing / 32)))
        return ScanSpec(seed, "v1", spacing, thickness, size, float(min(120.0, 24 * thickness)))
    spacing = float(rng.uniform(0.5, 1.0))
    # Thin slices cover less z per scan to keep the voxel count (and generation time) level.
    z_extent = float(np.clip(40 * thickness, 50.0, 110.0))
    return ScanSpec(seed, "clinical", spacing, thickness, 512, z_extent)


def make_scan(spec: ScanSpec, n_lesions: int | None = None) -> Phantom:
    if spec.generator == "v1":
        n_slices = max(8, round(spec.z_extent_mm / spec.slice_thickness_mm))
        return make_ct_phantom(spec.seed, n_slices=n_slices, size=spec.size, pixel_spacing_mm=spec.pixel_spacing_mm,
                               slice_thickness_mm=spec.slice_thickness_mm, n_lesions=n_lesions)
    from synthetic.clinical_phantoms import make_clinical_phantom
    return make_clinical_phantom(spec.seed, size=spec.size, pixel_spacing_mm=spec.pixel_spacing_mm,
                                 slice_thickness_mm=spec.slice_thickness_mm, z_extent_mm=spec.z_extent_mm,
                                 n_lesions=n_lesions)


def training_lesion_count(seed: int) -> int:
    """About 1 in 6 training scans is lesion-free (bone and vessels only), else 1-8 lesions."""
    rng = np.random.default_rng([seed, 9])
    return 0 if rng.random() < 1 / 6 else int(rng.integers(1, 9))


@dataclass
class PreparedScan:
    """A scan as the network sees it: windowed slices on the 1.25 mm grid, and its masks there."""

    windowed: np.ndarray  # float16 (S, C, h, w)
    lesion: np.ndarray  # bool (S, h, w)
    bone: np.ndarray  # bool (S, h, w): > 300 HU, where hard negatives are drawn
    body: tuple[int, int, int, int]  # y0, y1, x0, x1 of the body on the working grid
    slice_spacing_mm: float
    components: list[np.ndarray]  # flat voxel indices of each lesion on the working grid


def prepare_scan(phantom: Phantom) -> PreparedScan:
    """The detector's own preprocessing (``resample_in_plane`` then ``window_hu``), and the masks."""
    spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
    hu = resample_in_plane(torch.from_numpy(phantom.volume_hu.astype(np.float32)), spacing, GRID.in_plane_mm)
    mask = resample_in_plane(torch.from_numpy(phantom.lesion_mask.astype(np.float32)), spacing, GRID.in_plane_mm)
    body = (hu > -500).any(dim=0).numpy()
    ys, xs = np.nonzero(body)
    box = (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) if ys.size else (0, hu.shape[1] - 1, 0, hu.shape[2] - 1)
    lesion = (mask >= 0.5).numpy()
    labels, count = label_components_3d(lesion)
    flat = labels.reshape(-1)
    foreground = np.flatnonzero(flat)
    order = np.argsort(flat[foreground], kind="stable")
    components = np.split(foreground[order], np.searchsorted(flat[foreground][order], np.arange(2, count + 1)))
    return PreparedScan(window_hu(hu).half().numpy(), lesion, (hu > 300).numpy(), box, phantom.slice_thickness_mm,
                        [c for c in components if c.size] if count else [])


def _prepare_seed(seed: int) -> PreparedScan:
    torch.set_num_threads(1)
    return prepare_scan(make_scan(draw_spec(seed), training_lesion_count(seed)))


class PatchSampler:
    """Batches of 2.5D patches on ``device``: half around lesion voxels, ``bone_share`` on bone."""

    def __init__(self, device: torch.device, seed: int, bone_share: float = 0.2) -> None:
        self.device = device
        self.rng = np.random.default_rng(seed)
        self.bone_share = bone_share
        self.scans: list[PreparedScan] = []
        self.volumes: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.lesion_voxels: list[np.ndarray] = []
        self.bone_voxels: list[np.ndarray] = []
        self.with_lesions: list[int] = []

    def add(self, scan: PreparedScan) -> None:
        """Scans arrive while training runs (they are made in other processes)."""
        if scan.lesion.any():
            self.with_lesions.append(len(self.scans))
        self.volumes.append(torch.from_numpy(scan.windowed).to(self.device))
        self.scans.append(replace(scan, windowed=np.empty(0, np.float16)))  # the pixels live on the device
        self.masks.append(torch.from_numpy(scan.lesion).to(self.device))
        self.lesion_voxels.append(np.flatnonzero(scan.lesion))
        self.bone_voxels.append(np.flatnonzero(scan.bone)[::7])

    def _centre(self) -> tuple[int, int, int, int]:
        draw = self.rng.random()
        if draw < 0.5 and self.with_lesions:
            # Half by voxel (big lesions more often), half by lesion (a 5 mm nodule as often as a mass).
            k = int(self.rng.choice(self.with_lesions))
            components = self.scans[k].components
            voxels = (self.lesion_voxels[k] if draw < 0.25 or not components
                      else components[int(self.rng.integers(len(components)))])
            z, y, x = np.unravel_index(int(self.rng.choice(voxels)), self.scans[k].lesion.shape)
            jitter = PATCH // 2 - 12
            return k, int(z), int(y + self.rng.integers(-jitter, jitter)), int(x + self.rng.integers(-jitter, jitter))
        k = int(self.rng.integers(len(self.scans)))
        if draw < 0.5 + self.bone_share and self.bone_voxels[k].size:
            z, y, x = np.unravel_index(int(self.rng.choice(self.bone_voxels[k])), self.scans[k].bone.shape)
            return k, int(z), int(y), int(x)
        y0, y1, x0, x1 = self.scans[k].body
        return k, int(self.rng.integers(self.scans[k].lesion.shape[0])), int(self.rng.integers(y0, y1 + 1)), \
            int(self.rng.integers(x0, x1 + 1))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(size):
            k, z, y, x = self._centre()
            volume, mask = self.volumes[k], self.masks[k]
            _, _, height, width = volume.shape
            y = min(max(y - PATCH // 2, 0), max(height - PATCH, 0))
            x = min(max(x - PATCH // 2, 0), max(width - PATCH, 0))
            # Context at 2.5 mm with the scan's own interval, jittered +-20% so interpolation varies.
            context = GRID.context_mm * float(self.rng.uniform(0.8, 1.2))
            window = volume[:, :, y:y + PATCH, x:x + PATCH]
            patch = physical_context(window, [z], self.scans[k].slice_spacing_mm, context)[0].float()
            target = mask[z, y:y + PATCH, x:x + PATCH].float()
            ph, pw = patch.shape[1:]
            if (ph, pw) != (PATCH, PATCH):  # a scan narrower than a patch: pad with air
                patch = F.pad(patch, (0, PATCH - pw, 0, PATCH - ph))
                target = F.pad(target, (0, PATCH - pw, 0, PATCH - ph))
            if self.rng.random() < 0.5:
                patch, target = patch.flip(-1), target.flip(-1)
            if self.rng.random() < 0.5:  # the stack reads the same upside down
                c = len(WINDOWS)
                patch = patch.reshape(3, c, PATCH, PATCH).flip(0).reshape(-1, PATCH, PATCH)
            xs.append(patch)
            ys.append(target)
        return torch.stack(xs), torch.stack(ys)[:, None]


def train(out_dir: Path, *, n_scans: int, minutes: float, seed: int = 0, batch_size: int = 64,
          learning_rate: float = 3e-3, workers: int | None = None, start_scans: int = 32) -> Path:
    """Train for ``minutes`` of wall time; writes the state dict and a training record.

    Scans are made by ``workers`` processes while the network trains: it starts once
    ``start_scans`` are ready and takes each new one as it comes, up to ``n_scans`` (the ones not
    made when time is up are never made). The learning rate warms up over the first 5% of the time
    and then follows a cosine to zero at the end, so the schedule needs no step count.
    """
    started = time.perf_counter()
    seeds = list(range(TRAIN_SEED_BASE + seed * 10_000, TRAIN_SEED_BASE + seed * 10_000 + n_scans))
    # The workers are forked before CUDA is touched in this process; they use the CPU only.
    pool = ProcessPoolExecutor(max(1, workers or (os.cpu_count() or 2) - 1))
    pending: dict[Future[PreparedScan], int] = {pool.submit(_prepare_seed, s): s for s in seeds}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / f"{MODEL_NAME}-v{MODEL_VERSION}.state.pt"
    sampler = PatchSampler(device, seed)
    used: list[int] = []

    def collect(block: bool) -> None:
        done = wait(pending, return_when=FIRST_COMPLETED).done if block else [f for f in pending if f.done()]
        for future in done:
            sampler.add(future.result())
            used.append(pending.pop(future))

    while len(used) < min(start_scans, n_scans):
        collect(block=True)
    first_ready_s = time.perf_counter() - started
    model = LesionUNet(IN_CHANNELS, WIDTHS).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    model.train()
    train_started = time.perf_counter()
    budget_s = max(minutes * 60 - first_ready_s, 1.0)
    running, losses, step = 0.0, [], 0
    saved = time.perf_counter()
    while (elapsed := time.perf_counter() - train_started) < budget_s:
        fraction = elapsed / budget_s
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * (fraction / 0.05 if fraction < 0.05
                                           else 0.5 * (1 + math.cos(math.pi * (fraction - 0.05) / 0.95)))
        x, y = sampler.batch(batch_size)
        loss = detection_loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running += float(loss.detach())
        step += 1
        if step % 50 == 0:
            collect(block=False)
        if step % 200 == 0:
            losses.append(round(running / 200, 5))
            running = 0.0
            logger.info("step %d loss %.4f, %d scans (%.0f s)", step, losses[-1], len(used), time.perf_counter() - started)
        if time.perf_counter() - saved > 60:  # a run cut short still leaves its latest weights
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, state_path)
            saved = time.perf_counter()
    pool.shutdown(wait=False, cancel_futures=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, state_path)
    record = {
        "seed": seed, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "steps": step, "batch_size": batch_size, "patch_size": PATCH, "learning_rate": learning_rate,
        "schedule": "linear warm-up over 5% of the time, then cosine to 0", "loss_every_200_steps": losses,
        "first_scans_ready_s": round(first_ready_s, 1), "wall_time_s": round(time.perf_counter() - started, 1),
        "train_seeds": sorted(used), "n_train_scans": len(used),
        "n_train_lesions": int(sum(training_lesion_count(s) for s in used)),
        "n_v1_generator_scans": sum(draw_spec(s).generator == "v1" for s in used),
        "torch_version": torch.__version__,
    }
    (out_dir / "training-record.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("wrote %s after %d steps on %d scans", state_path, step, len(used))
    return state_path


# ---------------------------------------------------------------------------------------------
# After training: calibration, threshold, held-out metrics, manifest (CPU)
# ---------------------------------------------------------------------------------------------

def _validation_specs(base: int, count: int) -> list[tuple[ScanSpec, int | None]]:
    """Half clinical scans, half v1 scans, on grids drawn like training's; every fourth lesion-free."""
    return [_validation_spec(base + k, k) for k in range(count)]


def _validation_spec(seed: int, k: int) -> tuple[ScanSpec, int | None]:
    return draw_spec(seed, v1_share=0.0 if k % 2 == 0 else 1.0), (0 if k % 4 == 3 else None)


def validation_scan(seed: int, base: int = VALIDATION_SEED_BASE) -> Phantom:
    """Validation scan ``seed`` (from ``base``), as ``_validation_specs`` draws it."""
    k = seed - base
    if k < 0:
        raise TrainingError(f"validation seed {seed} is below its block {base}")
    spec, n_lesions = _validation_spec(seed, k)
    return make_scan(spec, n_lesions)


def operating_point(runs: Sequence[tuple[Phantom, np.ndarray, list[Detection], list[int]]], calibration: Calibration,
                    fp_per_scan: float) -> float:
    """The lowest calibrated confidence with at most ``fp_per_scan`` false positives per scan on ``runs``."""
    max_p = np.array([d.max_probability for _, _, dets, _ in runs for d in dets])
    volume = np.array([d.n_voxels * ph.pixel_spacing_mm ** 2 * ph.slice_thickness_mm
                       for ph, _, dets, _ in runs for d in dets], dtype=np.float64)
    confidences = calibration.apply(max_p, volume) if max_p.size else np.zeros(0)
    ids = [scan * 1000 + m if m >= 0 else -1 for scan, (_, _, _, matches) in enumerate(runs) for m in matches]
    n_lesions = sum(len(phantom.lesions) for phantom, _, _, _ in runs)
    _, threshold = sensitivity_at_fp_rate(froc_curve(confidences, ids, max(n_lesions, 1), len(runs)), fp_per_scan)
    return float(min(threshold, 1.0)) if math.isfinite(threshold) else 1.0


def finish(state_path: Path, out_dir: Path, *, n_validation: int = 24, n_heldout: int = 24, threads: int = 2) -> Path:
    """Calibrate, evaluate on held-out scans of the training generators and write weights + manifest."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = LesionUNet(IN_CHANNELS, WIDTHS)
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    model.eval()
    record_path = Path(state_path).with_name("training-record.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    raw = LesionDetector.from_model(model, threshold=CANDIDATE_THRESHOLD, grid=GRID)
    validation_seeds = range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + n_validation)
    validation_runs = run_on_phantoms(raw, validation_seeds, validation_scan)
    calibration = calibration_from_runs(validation_runs, physical=True)
    report_threshold = operating_point(validation_runs, calibration, REPORT_FP_PER_SCAN)
    detector = LesionDetector.from_model(model, calibration=calibration, threshold=CANDIDATE_THRESHOLD, grid=GRID)
    heldout_seeds = range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + n_heldout)
    metrics: EvaluationMetrics = metrics_from_runs(
        run_on_phantoms(detector, heldout_seeds, partial(validation_scan, base=HELDOUT_SEED_BASE)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{MODEL_NAME}-v{MODEL_VERSION}.pt"
    torch.save(model.state_dict(), weights_path)
    manifest = {
        "model_name": MODEL_NAME,
        "version": MODEL_VERSION,
        "weights_file": weights_path.name,
        "sha256": sha256_of_file(weights_path),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "architecture": {"class": "ai_services.network.LesionUNet", "in_channels": IN_CHANNELS,
                         "widths": list(WIDTHS), "context_slices": 3, "windows_hu": [list(w) for w in WINDOWS],
                         "parameters": count_parameters(model)},
        "preprocessing": GRID.to_json(),
        "candidate_threshold": CANDIDATE_THRESHOLD,
        "calibration": calibration.to_json(),
        "report_threshold": round(report_threshold, 4),
        "report_threshold_rule": f"the lowest calibrated confidence with at most {REPORT_FP_PER_SCAN:g} false "
                                 f"positive per scan on the {n_validation} validation scans the calibration was fitted on",
        "training": record,
        "training_data": {
            "generator": "synthetic.clinical_phantoms.make_clinical_phantom + synthetic.phantoms.make_ct_phantom",
            "grid_rule": "ai_services.training_clinical.draw_spec(seed)",
            "train_lesion_count_rule": "ai_services.training_clinical.training_lesion_count(seed)",
            "train_seeds": record.get("train_seeds"),
            "validation_seeds": [VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + n_validation - 1],
            "validation_rule": "ai_services.training_clinical._validation_specs",
            "heldout_seeds": [HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + n_heldout - 1],
        },
        "heldout_metrics": metrics.to_json(),
        "hit_rule": "centre in lesion mask on a spanned slice, or within max(radius, 3 mm) in-plane "
                    "on a spanned slice intersecting the lesion; repeats on one lesion ignored",
    }
    manifest_path_for(weights_path).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %s in %.0f s: %s", weights_path, time.perf_counter() - started, metrics.to_json())
    return weights_path


# What the model was trained and checked on; the applicability gate refuses the rest. Pixel spacing
# and slice thickness span the training grids (0.5-1.6 mm, 0.625-5 mm); the independent evaluation
# covers 0.7 mm at 1.25 and 5 mm slices, and the card says so.
VALIDATED_RANGE: dict[str, object] = {
    "modalities": ["CT"],
    "sop_class_uids": {"1.2.840.10008.5.1.4.1.1.2": "CT Image Storage"},
    "excluded_image_types": ["LOCALIZER"],
    "body_parts": ["CHEST", "THORAX", "LUNG"],
    "max_tilt_from_axial_degrees": 10.0,
    "slice_thickness_mm": [0.6, 5.5],
    "slice_spacing_mm": [0.6, 5.5],
    "pixel_spacing_mm": [0.5, 1.6],
    "min_field_of_view_mm": 200.0,
    "min_slices": 8,
    "hu_statistics": {
        "note": "Fractions of the voxels inside the reconstruction (above -1100 HU): wide enough for chest CT, "
                "refusing volumes that are not CT numbers (NM counts, RT dose, MR).",
        "padding_below_hu": -1100.0, "max_padding_fraction": 0.6,
        "air_hu": [-1100.0, -900.0], "air_fraction": [0.0, 0.95],
        "soft_tissue_hu": [-200.0, 200.0], "soft_tissue_fraction": [0.03, 0.9],
        "bone_from_hu": 300.0, "max_bone_fraction": 0.3,
        "p01_hu_at_most": -700.0, "p999_hu_at_most": 3100.0,
    },
}


def model_card(manifest: dict[str, object], evaluation: dict[str, object]) -> dict[str, object]:
    """The manifest's ``intended_use`` and ``model_card`` blocks, every number read from the
    independent evaluation (``hospital ai evaluate --json``) or the manifest itself."""
    overall = evaluation["overall"]
    assert isinstance(overall, dict)
    sens, fps = overall["sensitivity_at_operating_point"], overall["false_positives_per_scan"]
    free = overall["false_positives_per_lesion_free_scan"]
    grids = ", ".join(str(g["grid"]) for g in evaluation["per_grid"])  # type: ignore[attr-defined]
    by_size = {r["group"]: r for r in evaluation["by_group"].get("size", [])}  # type: ignore[attr-defined]
    by_kind = {r["group"]: r for r in evaluation["by_group"].get("kind", [])}  # type: ignore[attr-defined]

    def found(row: dict[str, object]) -> str:
        return f"{row['found']}/{row['n_lesions']}"

    training = manifest.get("training", {})
    assert isinstance(training, dict)
    validated = VALIDATED_RANGE
    intended = ("Flag candidate lesions in the lungs and liver on axial chest CT for a radiologist's review: pixel "
                "spacing 0.5-1.6 mm, slice thickness 0.6-5.5 mm, field of view >= 200 mm. Tested independently only on "
                f"synthetic scans ({grids}). Not validated on patient data; every finding needs a radiologist's decision.")
    small = [by_size[k] for k in by_size if k.startswith("5 ")]
    eight = [by_size[k] for k in by_size if k.startswith("8 ")]
    failure_modes = [
        f"Lesions of 5 mm are mostly missed ({found(small[0]) if small else 'n/a'} found at the operating point) and "
        f"8 mm ones often ({found(eight[0]) if eight else 'n/a'}).",
        f"Hypodense liver lesions are found less often than solid ones ({found(by_kind['hypodense'])} against "
        f"{found(by_kind['solid'])})." if "hypodense" in by_kind and "solid" in by_kind else "",
        f"False positives on scans without lesions: {free['value']:.1f} per scan at the operating point on the "
        f"independent generator, and up to {overall['max_confidence_lesion_free']:.2f} confidence on such a scan.",
        "Confidence rises with the finding's size in mm^3 (Platt weight on log volume) as much as with the network's "
        "probability: a large false positive can read as confident.",
    ]
    return {
        "intended_use": {
            "summary": intended,
            "trained_on": "synthetic data only",
            "evidence": ("Trained on synthetic.clinical_phantoms and synthetic.phantoms scans at random grids (pixel "
                         "spacing 0.5-1.6 mm, slices 0.625-5 mm); tested on the independently designed "
                         f"synthetic.eval_phantoms at {grids}. The range allows header rounding around those grids."),
            "validated_range": validated,
        },
        "model_card": {
            "intended_use": intended,
            "training_data": (f"Trained on synthetic data only: {training.get('n_train_scans')} scans "
                              f"({training.get('n_v1_generator_scans')} from synthetic.phantoms, the rest from "
                              "synthetic.clinical_phantoms) at random clinical grids; calibrated and the operating point "
                              "fixed on separate validation seeds."),
            "operating_point": {
                "description": (f"findings at or above confidence {evaluation['operating_threshold']:.3f} "
                                f"({evaluation['threshold_source']})"),
                "candidate_threshold": manifest.get("candidate_threshold"),
                "report_threshold": manifest.get("report_threshold"),
                "sensitivity": sens["value"], "sensitivity_ci95": sens["ci95"],
                "sensitivity_ci_method": f"{evaluation['n_bootstrap']} bootstrap resamples of scans",
                "false_positives_per_scan": fps["value"], "false_positives_per_scan_ci95": fps["ci95"],
                "false_positives_ci_method": f"{evaluation['n_bootstrap']} bootstrap resamples of scans",
                "evaluated_on": (f"the independent generator {evaluation['generator']}: {overall['n_scans']} scans "
                                 f"({overall['n_lesion_free']} lesion-free with bone), {overall['n_lesions']} lesions, "
                                 f"grids {grids}"),
            },
            "metrics_caveats": [
                "Every test scan is synthetic; nothing here was measured on patient data.",
                "The calibration was fitted on the training generators' validation scans and never re-checked on "
                "reviewed patient cases before release (retraining re-checks it on reviewed cases).",
            ],
            "known_failure_modes": [m for m in failure_modes if m],
        },
        "independent_evaluation": evaluation,
    }


def write_card(weights_path: Path, evaluation_path: Path) -> None:
    manifest_path = manifest_path_for(weights_path)
    manifest = json.loads(manifest_path.read_text())
    manifest.update(model_card(manifest, json.loads(evaluation_path.read_text())))
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the grid-independent lesion detector (v2).")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--scans", type=int, default=320)
    t.add_argument("--minutes", type=float, default=6.0)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--workers", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("finish")
    f.add_argument("--state", type=Path, required=True)
    f.add_argument("--out", type=Path, default=Path("ai_services/weights"))
    f.add_argument("--validation", type=int, default=24)
    f.add_argument("--heldout", type=int, default=24)
    c = sub.add_parser("card", help="write the intended use and model card from `hospital ai evaluate --json`")
    c.add_argument("--weights", type=Path, required=True)
    c.add_argument("--evaluation", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "train":
        if args.scans < 1 or args.minutes <= 0:
            raise TrainingError("need at least one scan and a positive time budget")
        print(train(args.out, n_scans=args.scans, minutes=args.minutes, seed=args.seed, batch_size=args.batch_size,
                    workers=args.workers))
    elif args.command == "finish":
        print(finish(args.state, args.out, n_validation=args.validation, n_heldout=args.heldout))
    else:
        write_card(args.weights, args.evaluation)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
