"""Benchmark of the imaging AI: per-slice inference, a whole study from files to report, training.

1. Inference per 512x512 CT slice with the v1 weights: the full ``predict_probabilities``
   pipeline (area downsampling to the 256 working size, windowing, 2.5D stacking, U-Net, upsampling
   back to 512) at batch 1 and batched; ms per slice, median of repeats. ``--device cuda`` runs the
   same pipeline with the model and tensors on the GPU (synchronised before each clock read).
   Then v1 and v2 side by side (CPU), each through its own ``predict_probabilities`` (v2 resamples
   to 1.25 mm pixels), on a 512x512 clinical-grid volume.
2. Study to report (CPU, the default model v2): a 100-slice 512x512 study at 0.7 mm, 1.25 mm apart, written to disk, then stored with
   ``store_instance`` (arrival), marked complete and analysed by ``ai_services.jobs.analyse_study``
   on embedded SQLite with inline jobs, until the preliminary report exists; median of 3.
3. Training: seconds per fine-tuning step (batch 16, 96x96 patches) as ``ai_services.retraining``
   runs it, and the v1 training wall time recorded in its manifest.

Usage: .venv/bin/python bench/ai_inference.py [--device cpu|cuda] [--threads 2] [--repeats 5]
Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_services.inference import LesionDetector, stack_context, window_hu  # noqa: E402
from ai_services.network import CONTEXT_SLICES  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "ai_services" / "weights" / "lesion-detector-v1.pt"
WEIGHTS_V2 = WEIGHTS.with_name("lesion-detector-v2.pt")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def predict_on_device(detector: LesionDetector, hu: np.ndarray, device: str, batch_size: int) -> np.ndarray:
    """``LesionDetector.predict_probabilities`` with every tensor on ``device``."""
    n, rows, cols = hu.shape
    hu_t = torch.from_numpy(hu).to(device)
    scale = min(1.0, detector.working_size / max(rows, cols))
    if scale < 1.0:
        hu_t = F.interpolate(hu_t[:, None], size=(round(rows * scale), round(cols * scale)), mode="area")[:, 0]
    windowed = window_hu(hu_t)
    h, w = hu_t.shape[1:]
    out = torch.empty((n, h, w), device=device)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            x = stack_context(windowed, idx).contiguous(memory_format=torch.channels_last)
            out[start:idx.stop] = torch.sigmoid(detector.model(x))[:, 0]
        out = F.interpolate(out[:, None], size=(rows, cols), mode="bilinear", align_corners=False)[:, 0]
    return out.cpu().numpy()


def bench_slices(device: str, repeats: int) -> dict[str, float]:
    from synthetic.phantoms import make_ct_phantom

    detector = LesionDetector.load(WEIGHTS)
    detector.model.to(device)
    volume = make_ct_phantom(20_000, n_slices=32, size=512, pixel_spacing_mm=0.75).volume_hu.astype(np.float32)
    results = {}
    for label, batch, n in (("batch 1", 1, 8), ("batch 8", 8, 32), ("batch 32", 32, 32)):
        times = []
        for _ in range(repeats + 1):
            _sync(device)
            started = time.perf_counter()
            predict_on_device(detector, volume[:n], device, batch)
            _sync(device)
            times.append((time.perf_counter() - started) / n * 1000)
        results[label] = statistics.median(times[1:])  # the first run warms up
    return results


def bench_grid_model(repeats: int, n_slices: int = 32) -> dict[str, float]:
    """CPU ms per 512x512 slice through ``predict_probabilities``: v1 (area-downsampled to 256) and
    v2 (resampled to 1.25 mm pixels from 0.7 mm, neighbours 2.5 mm away), same volume, same run."""
    from synthetic.clinical_phantoms import make_clinical_phantom

    volume = make_clinical_phantom(20_700, pixel_spacing_mm=0.7, slice_thickness_mm=1.25,
                                   z_extent_mm=n_slices * 1.25).volume_hu.astype(np.float32)
    detectors = {"v1": LesionDetector.load(WEIGHTS), "v2": LesionDetector.load(WEIGHTS_V2)}
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(repeats + 1):
        for name, detector in detectors.items():  # interleaved: both see the same machine state
            started = time.perf_counter()
            detector.predict_probabilities(volume, pixel_spacing_mm=(0.7, 0.7), slice_spacing_mm=1.25)
            times[name].append((time.perf_counter() - started) / volume.shape[0] * 1000)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def bench_study_to_report(runs: int, n_slices: int) -> list[float]:
    from sqlalchemy import select

    from ai_services.jobs import analyse_study_again
    from ai_services.models import DiagnosticReport
    from hospital.app import create_app
    from hospital.db import get_db
    from hospital.migrate import upgrade
    from hospital.seed import seed_demo
    from imaging_orders.archive.ingest import store_instance
    from imaging_orders.archive.models import ImagingStudy, StudyStatus
    from synthetic.clinical_phantoms import make_clinical_phantom
    from synthetic.dicom_factory import write_ct_series

    # 512 x 512 slices at 0.7 mm, 1.25 mm apart: a clinical grid inside the default model's (v2)
    # validated range (outside it the gate answers "not applicable" without running the model, and
    # this would time that shortcut instead of the analysis).
    phantom = make_clinical_phantom(20_001, pixel_spacing_mm=0.7, slice_thickness_mm=1.25, z_extent_mm=n_slices * 1.25)
    times = []
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            url = f"sqlite:///{tmp_path / 'hospital.db'}"
            upgrade(url)
            app = create_app({"DATABASE_URL": url, "REDIS_URL": None, "SECRET_KEY": "bench", "INSTANCE_DIR": tmp_path,
                              "DICOM_STORAGE_DIR": tmp_path / "dicom"})
            with app.app_context():
                with get_db(app).transaction() as session:
                    seed = seed_demo(session, app)
                    patient_id, mrn = seed.patient.id, seed.patient.mrn
                files = write_ct_series(phantom, tmp_path / "incoming", patient_id=mrn, patient_name="Bench^Study",
                                        accession_number=f"BENCH{run}")
                started = time.perf_counter()
                results = [store_instance(app, f.read_bytes(), transfer_syntax_uid=None, calling_ae="BENCH")
                           for f in files]
                with get_db(app).transaction() as session:
                    study = session.get(ImagingStudy, results[0].study_id)
                    study.patient_id, study.status = patient_id, StudyStatus.AVAILABLE
                with get_db(app).transaction() as session:
                    analyse_study_again(session, results[0].study_id)
                with get_db(app).session() as session:
                    report = session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == results[0].study_id))
                    assert report is not None, "no report was made"
                    assert not report.conclusion.startswith("AI not applicable"), report.conclusion
                times.append(time.perf_counter() - started)
            get_db(app).engine.dispose()
    return times


def bench_training_step(steps: int) -> float:
    from ai_services.retraining import RetrainConfig, fine_tune, load_model, synthetic_slices

    config = RetrainConfig(steps=steps, batch_size=16, patch_size=96, synthetic_train_phantoms=2, phantom_slices=8)
    data = synthetic_slices(config)
    model, _ = load_model(WEIGHTS)
    started = time.perf_counter()
    fine_tune(model, data, data, config)
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--study-runs", type=int, default=3)
    parser.add_argument("--study-slices", type=int, default=100)
    parser.add_argument("--training-steps", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    slices = bench_slices(args.device, args.repeats)
    grid = bench_grid_model(args.repeats) if args.device == "cpu" else {}
    study = bench_study_to_report(args.study_runs, args.study_slices) if args.study_runs else []
    step = bench_training_step(args.training_steps) if args.training_steps else float("nan")
    v1 = json.loads(WEIGHTS.with_suffix(".json").read_text())
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"### Inference per 512x512 slice ({device}, torch {torch.__version__}), median of {args.repeats}\n")
    print("| batch | ms per slice |\n|---|---|")
    for label, ms in slices.items():
        print(f"| {label.removeprefix('batch ')} | {ms:.1f} |")
    if grid:
        print(f"\n### v1 and v2 through predict_probabilities: 512x512 at 0.7 mm, 1.25 mm slices, CPU, {args.threads} threads\n")
        print("| model | ms per slice |\n|---|---|")
        for name, ms in grid.items():
            print(f"| {name} | {ms:.1f} |")
        print(f"\nv2 / v1: {grid['v2'] / grid['v1']:.2f}x")
    if study:
        print(f"\n### Study to preliminary report: {args.study_slices} slices 512x512, CPU, SQLite, inline jobs\n")
        print(f"median {statistics.median(study):.1f} s; runs: {', '.join(f'{t:.1f}' for t in study)} s")
    print("\n### Training\n")
    print(f"fine-tuning step (batch 16, 96x96 patches, {CONTEXT_SLICES}-slice input): {step * 1000:.0f} ms; "
          f"v1 full training (manifest): {v1['training']['wall_time_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
