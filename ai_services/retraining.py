"""The closed learning loop: radiologists' decisions on signed reports become training labels, a
candidate model is fine-tuned from the active one, and it replaces the active one only when it is
measurably better and nowhere worse.

1. ``collect_labels``: every finding of a SIGNED report with a decision is a label on its key slice.
   Accepted, edited (final box) and radiologist-added findings are positives: the mask is the
   ellipse inscribed in the final box. Rejected AI findings are explicit negatives: their box is
   background, and patches are drawn there on purpose (hard negatives). The key slice and its two
   neighbours (the network's 2.5D input) are read from the stored DICOM files. Cases are split by a
   hash of the StudyInstanceUID (stable, independent of order) into a fine-tune part and a held-out part.
2. ``train_candidate``: fine-tune a copy of the active weights (BatchNorm statistics frozen) on
   patches drawn half from reviewed slices and half from synthetic phantoms (fixed seeds, so the
   base skills are rehearsed), re-fit the Platt calibration on synthetic validation phantoms, and
   evaluate candidate and active version on the same held-out data: synthetic phantoms (ground
   truth) and the held-out reviewed cases (radiologists' truth).
3. Promotion rule (``decide_promotion``). Each cycle calibrates and scores on synthetic seeds of
   its own (``cycle_seeds``: a block keyed by the candidate's version, never v1's test seeds).
   Primary metric: the mean of FROC sensitivity at 4 false positives per scan on the cycle's
   synthetic held-out phantoms and on the held-out reviewed cases (only the synthetic one when no
   reviewed case is held out). The candidate is promoted only when the lower bound of the 95% CI
   of its gain over the active version (paired bootstrap: held-out scans and cases resampled, both
   versions scored on the same resample) is above ``margin`` (default 0), AND the synthetic guard
   finds nothing: synthetic sensitivity at 4 FP/scan, and each size group big enough that one
   lesion is within ``tolerance`` (default 0.05), fell by no more than ``tolerance``; and neither
   did the reviewed sensitivities; and its calibration, re-checked on the held-out reviewed cases
   (``reviewed_calibration``: ECE of both versions' detections against the radiologists' kept
   boxes, bootstrap CIs), is not worse beyond its CI (the paired CI of the ECE change lies above
   ``calibration_tolerance``). Otherwise it is kept registered as ``rejected`` with the reason
   (the guard's findings first, prefixed "synthetic guard:"). Synthetic ground truth guards against
   corrupted labels: a labeller who rejects true lesions makes a candidate that misses lesions the
   phantoms know are there, and that is refused however well it fits the labels.

``retrain`` runs the three steps; ``ai_services.jobs.retrain_model`` runs them without holding a
transaction during training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.inference import (
    DEFAULT_CANDIDATE_THRESHOLD,
    Calibration,
    Detection,
    LesionDetector,
    PhysicalGrid,
    manifest_path_for,
    physical_context,
    resample_in_plane,
    sha256_of_file,
)
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    FindingSource,
    ModelStatus,
    ModelVersion,
    ReportStatus,
    ReviewStatus,
)
from ai_services.network import CONTEXT_SLICES, WINDOWS, LesionUNet
from ai_services.series_reader import SeriesReadError, read_ct_volume
from ai_services.service import DEFAULT_MODEL_NAME, activate_model_version, active_model_version, register_model_version
from ai_services.training import (
    GRID_TRAIN_SEEDS,
    SIZE_GROUPS,
    EvaluationMetrics,
    calibrate,
    detection_loss,
    draw_patch,
    expected_calibration_error,
    froc_curve,
    metrics_from_runs,
    run_on_phantoms,
    sensitivity_at_fp_rate,
    slice_pool,
)
from imaging_orders.archive.public import instance_paths, study_ref
from synthetic.phantoms import Phantom, make_ct_phantom

logger = logging.getLogger(__name__)

POSITIVE_DECISIONS = (ReviewStatus.ACCEPTED, ReviewStatus.EDITED)
SIGNED_STATUSES = (ReportStatus.FINAL, ReportStatus.AMENDED)
# Retraining draws synthetic phantoms from its own seed block, disjoint from the v1 training seeds
# (0..9999 in blocks of 1000 per run seed), validation (10 000..) and held-out (20 000..).
RETRAIN_SYNTHETIC_SEED_BASE = 5_000
# Each promotion cycle calibrates and scores on synthetic seeds of its own, drawn from a block keyed
# by the candidate's version number: re-using one held-out set every cycle (v1's test seeds, as
# before) lets a long run of candidates be selected for that set's luck.
RETRAIN_CYCLE_SEED_BASE = 100_000
SEEDS_PER_CYCLE = 1_000
CONFIDENCE = 0.95


class RetrainingError(RuntimeError):
    """Retraining cannot start (no active version, too few labels) or its inputs are unusable."""


def cycle_seeds(version: str, n_validation: int, n_heldout: int) -> tuple[range, range]:
    """(calibration seeds, held-out seeds) of the cycle that makes candidate ``version``: fresh for
    every cycle and disjoint from v1's training, validation and test seeds."""
    if not version.isdigit() or n_validation > SEEDS_PER_CYCLE // 2 or n_heldout > SEEDS_PER_CYCLE // 2:
        raise RetrainingError(f"no seed block for version {version!r} with {n_validation}/{n_heldout} phantoms")
    base = RETRAIN_CYCLE_SEED_BASE + int(version) * SEEDS_PER_CYCLE
    if base + SEEDS_PER_CYCLE > GRID_TRAIN_SEEDS.start:  # version 100 on: past the v2 training block
        base += len(GRID_TRAIN_SEEDS)
    half = SEEDS_PER_CYCLE // 2
    return range(base, base + n_validation), range(base + half, base + half + n_heldout)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelBox:
    slice_index: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, x1/y1 exclusive


@dataclass
class ReviewedCase:
    """One signed report's labels, on the series the AI analysed."""

    study_id: int | None  # None for a case read from a research dataset export
    report_id: int | None
    instance_paths: list[Path]  # slice order, as analysed
    pixel_spacing_mm: tuple[float, float]
    positives: list[LabelBox]
    negatives: list[LabelBox]
    heldout: bool
    research_study_uid: str | None = None  # the export's (de-identified) StudyInstanceUID

    @property
    def key(self) -> int | str:
        """What identifies the case in a label set's digest: the report, or the research study."""
        if self.report_id is not None:
            return self.report_id
        return f"research:{self.research_study_uid}"


@dataclass
class LabelledSlice:
    """A training example: the 2.5D HU input of one slice and its target mask."""

    hu: np.ndarray  # float32 (CONTEXT_SLICES, H, W)
    mask: np.ndarray  # bool (H, W)
    focus: list[tuple[int, int]]  # (row, col) points patches are centred on: lesions and negatives


@dataclass
class ReviewedLabels:
    cases: list[ReviewedCase]
    finetune: list[LabelledSlice]
    # Where the labels came from when not the platform's own signed reports: a research dataset
    # version (its number and manifest SHA-256), kept in the candidate's manifest as provenance.
    dataset: dict[str, Any] | None = None

    @property
    def heldout(self) -> list[ReviewedCase]:
        return [c for c in self.cases if c.heldout]

    def digest(self) -> str:
        """Identifies the label set, so the periodic job does not retrain on unchanged labels."""
        data = [(c.key, [asdict(b) for b in c.positives], [asdict(b) for b in c.negatives]) for c in self.cases]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def is_heldout_study(study_instance_uid: str, heldout_percent: int) -> bool:
    """Deterministic split by a hash of the StudyInstanceUID: the same study falls on the same side
    in every database and every run (row ids would depend on insertion history)."""
    bucket = int.from_bytes(hashlib.sha256(f"study:{study_instance_uid}".encode()).digest()[:4], "big") % 100
    return bucket < heldout_percent


def _study_uid(session: Session, study_id: int) -> str:
    study = study_ref(session, study_id)
    assert study is not None  # foreign key
    return study.study_instance_uid


def collect_labels(session: Session, storage_dir: Path, *, heldout_percent: int = 30) -> ReviewedLabels:
    """Labels from every signed report's reviewed findings (see the module docstring)."""
    cases: list[ReviewedCase] = []
    finetune: list[LabelledSlice] = []
    reports = session.scalars(
        select(DiagnosticReport).where(DiagnosticReport.status.in_(SIGNED_STATUSES),
                                       DiagnosticReport.analysis_job_id.is_not(None))
        .order_by(DiagnosticReport.id)
    ).all()
    for report in reports:
        job = session.get(AnalysisJob, report.analysis_job_id)
        if job is None or not job.slice_sop_instance_uids:
            continue
        if job.status is AnalysisStatus.NOT_APPLICABLE:
            continue  # outside the model's validated range: not training material for it
        positives, negatives = [], []
        for finding in report.findings:
            if finding.package_analysis_id is not None:
                continue  # a partner model's finding labels its model's claim, not the detector's
            label = LabelBox(finding.slice_index, (finding.x0, finding.y0, finding.x1, finding.y1))
            if finding.review_status in POSITIVE_DECISIONS:
                positives.append(label)
            elif finding.review_status is ReviewStatus.REJECTED and finding.source is FindingSource.AI:
                negatives.append(label)
        paths_by_uid = instance_paths(session, job.slice_sop_instance_uids, storage_dir)
        missing = [uid for uid in job.slice_sop_instance_uids if uid not in paths_by_uid]
        if missing:
            logger.warning("report %s: %d analysed slices are no longer stored; skipped", report.id, len(missing))
            continue
        case = ReviewedCase(
            study_id=report.study_id, report_id=report.id,
            instance_paths=[paths_by_uid[uid] for uid in job.slice_sop_instance_uids],
            pixel_spacing_mm=(float(job.pixel_spacing_mm[0]), float(job.pixel_spacing_mm[1])) if job.pixel_spacing_mm else (1.0, 1.0),
            positives=positives, negatives=negatives,
            heldout=is_heldout_study(_study_uid(session, report.study_id), heldout_percent),
        )
        cases.append(case)
        if not case.heldout:
            finetune.extend(labelled_slices(case))
    logger.info("collected labels from %d signed reports: %d fine-tune slices, %d held-out cases",
                len(cases), len(finetune), sum(c.heldout for c in cases))
    return ReviewedLabels(cases, finetune)


def labelled_slices(case: ReviewedCase, grid: PhysicalGrid | None = None) -> list[LabelledSlice]:
    """One example per labelled key slice: its context read from the stored files, its mask.

    For a model that reads every grid (``grid``), the example is what that model sees: neighbours
    ``grid.context_mm`` away and pixels of ``grid.in_plane_mm`` (``on_grid``).
    """
    by_slice: dict[int, tuple[list[LabelBox], list[LabelBox]]] = {}
    for box in case.positives:
        by_slice.setdefault(box.slice_index, ([], []))[0].append(box)
    for box in case.negatives:
        by_slice.setdefault(box.slice_index, ([], []))[1].append(box)
    n = len(case.instance_paths)
    half = CONTEXT_SLICES // 2
    volume = read_ct_volume(case.instance_paths) if grid is not None and by_slice else None
    out = []
    for index, (positives, negatives) in sorted(by_slice.items()):
        if volume is not None:
            hu = volume.hu[index]
        else:
            neighbours = [min(max(index + k, 0), n - 1) for k in range(-half, half + 1)]
            stack = np.stack([_slice_hu(case.instance_paths[i]) for i in neighbours])
            hu = stack[half]
        mask = np.zeros(hu.shape, dtype=bool)
        for label in positives:
            mask |= inscribed_ellipse(mask.shape, label.box)
        focus = [((b.box[1] + b.box[3]) // 2, (b.box[0] + b.box[2]) // 2) for b in positives + negatives]
        if volume is not None and grid is not None:
            out.append(on_grid(volume.hu, index, mask, focus, volume.pixel_spacing_mm, volume.slice_thickness_mm, grid))
        else:
            out.append(LabelledSlice(stack, mask, focus))
    return out


def on_grid(volume_hu: np.ndarray, index: int, mask: np.ndarray, focus: list[tuple[int, int]],
            pixel_spacing_mm: tuple[float, float], slice_spacing_mm: float, grid: PhysicalGrid) -> LabelledSlice:
    """Slice ``index`` of a volume as a grid model reads it (``inference.physical_context`` and
    ``inference.resample_in_plane``), with its mask and focus points moved onto that grid."""
    hu = torch.from_numpy(np.ascontiguousarray(volume_hu, dtype=np.float32))[:, None]
    stack = physical_context(hu, [index], slice_spacing_mm, grid.context_mm)[0]
    stack = resample_in_plane(stack, pixel_spacing_mm, grid.in_plane_mm)
    target = resample_in_plane(torch.from_numpy(mask.astype(np.float32))[None], pixel_spacing_mm, grid.in_plane_mm)[0]
    sy, sx = stack.shape[1] / mask.shape[0], stack.shape[2] / mask.shape[1]
    moved = [(min(int(r * sy), stack.shape[1] - 1), min(int(c * sx), stack.shape[2] - 1)) for r, c in focus]
    return LabelledSlice(stack.numpy(), (target >= 0.5).numpy(), moved)


class DatasetExportError(RetrainingError):
    """An exported research dataset version that cannot be trained on as it stands."""


# The decisions of docs/research-dataset.md that make a box a positive; `rejected` AI boxes are negatives.
EXPORT_POSITIVE_DECISIONS = {ReviewStatus.ACCEPTED.value, ReviewStatus.EDITED.value}


def _canonical_sha256(manifest: dict[str, Any]) -> str:
    """The manifest's SHA-256 as the research database computes it (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _export_header(export_dir: Path) -> tuple[int, str, dict[str, Any]]:
    """The version number and manifest SHA-256 from VERSION, and the manifest they vouch for."""
    try:
        version_lines = (export_dir / "VERSION").read_text(encoding="utf-8").splitlines()
        manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetExportError(f"{export_dir} is not a research dataset export ({exc})") from exc
    fields = dict(line.split(" ", 1) for line in version_lines if " " in line and not line.startswith("left out"))
    number, claimed = fields.get("dataset", "").removeprefix("version ").strip(), fields.get("manifest", "")
    claimed = claimed.removeprefix("sha256 ").strip()
    if not number.isdigit() or not claimed:
        raise DatasetExportError(f"{export_dir / 'VERSION'}: no dataset version number and manifest sha256")
    if _canonical_sha256(manifest) != claimed:
        raise DatasetExportError(f"{export_dir / 'manifest.json'} is not the manifest of dataset version {number} "
                                 f"(its SHA-256 is not {claimed})")
    return int(number), claimed, manifest


def _exported_file(export_dir: Path, relative: str, expected_sha256: str | None) -> Path:
    """The file a labels line names, inside the export and as the manifest hashed it."""
    root = export_dir.resolve()
    path = (export_dir / relative).resolve()
    if not path.is_relative_to(root):
        raise DatasetExportError(f"labels.jsonl names {relative!r}, outside the export")
    if expected_sha256 is None:
        raise DatasetExportError(f"labels.jsonl names {relative!r}, which the manifest does not list")
    if not path.is_file() or sha256_of_file(path) != expected_sha256:
        raise DatasetExportError(f"{relative}: missing or changed since export (SHA-256 differs from the manifest)")
    return path


def _case_from_export_line(export_dir: Path, line: dict[str, Any], hashes: dict[str, str],
                           heldout_percent: int, studies: dict[str, Any]) -> ReviewedCase | None:
    study_uid = str(line["study_instance_uid"])
    findings = line.get("findings") or []
    # The labels are the version's own (its manifest holds each study's findings); labels.jsonl is
    # only their layout, so a line that says otherwise is refused, not trained on.
    if study_uid not in studies:
        raise DatasetExportError(f"labels.jsonl names study {study_uid}, which the manifest does not hold")
    if findings != (studies[study_uid].get("findings") or []):
        raise DatasetExportError(f"labels.jsonl: the labels of study {study_uid} are not the manifest's "
                                 "(changed since export)")
    series: dict[str, list[Path]] = {}
    for relative in line.get("slices") or []:
        path = _exported_file(export_dir, str(relative), hashes.get(str(relative)))
        series.setdefault(path.parent.name, []).append(path)
    if not series:
        return None
    # A label's key slice is a SOP Instance UID (the file's name): its series is the one the AI read,
    # ordered the way the AI orders a series (by position along the slice normal).
    key_series = {sop: name for name, paths in series.items() for sop in (p.stem for p in paths)}
    wanted = [key_series.get(str(f.get("key_sop_instance_uid"))) for f in findings]
    chosen = next((s for s in wanted if s is not None), None)
    if chosen is None:
        if findings:
            logger.warning("dataset study %s: no label's key slice is in the export; skipped", study_uid)
        return None
    try:
        volume = read_ct_volume(series[chosen])
    except SeriesReadError as exc:
        raise DatasetExportError(f"dataset study {study_uid}: series {chosen} cannot be read ({exc})") from exc
    by_sop = {p.stem: p for p in series[chosen]}
    ordered = [by_sop[uid] for uid in volume.sop_instance_uids]
    index_of = {uid: i for i, uid in enumerate(volume.sop_instance_uids)}
    positives, negatives = [], []
    for finding in findings:
        index = index_of.get(str(finding.get("key_sop_instance_uid")))
        if index is None:
            continue  # on a series not in this case (or not exported): not a label for this volume
        x0, y0, x1, y1 = (int(v) for v in finding["box"])
        label = LabelBox(index, (x0, y0, x1, y1))
        decision, source = finding.get("decision"), finding.get("source")
        if decision in EXPORT_POSITIVE_DECISIONS:
            positives.append(label)
        elif decision == ReviewStatus.REJECTED.value and source == FindingSource.AI.value:
            negatives.append(label)
    return ReviewedCase(
        study_id=None, report_id=None, instance_paths=ordered, pixel_spacing_mm=volume.pixel_spacing_mm,
        positives=positives, negatives=negatives, heldout=is_heldout_study(study_uid, heldout_percent),
        research_study_uid=study_uid,
    )


def labels_from_dataset_export(export_dir: Path, *, heldout_percent: int = 30) -> ReviewedLabels:
    """Labels from a research dataset version exported by `hospital research dataset export`.

    The layout is docs/research-dataset.md's. Nothing is trusted that the version does not vouch
    for: VERSION's manifest SHA-256 must be the manifest's, every file read must carry the manifest's
    SHA-256 and lie inside the export. Each study's labels sit on the series holding their key
    slices; the same decisions as `collect_labels` make positives and hard negatives, and the same
    hash of the (research) StudyInstanceUID splits fine-tune from held-out cases.
    """
    export_dir = Path(export_dir)
    number, manifest_sha, manifest = _export_header(export_dir)
    hashes = {str(i["path"]): str(i["sha256"]) for i in manifest.get("instances", [])}
    cases: list[ReviewedCase] = []
    finetune: list[LabelledSlice] = []
    try:
        lines = (export_dir / "labels.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetExportError(f"{export_dir / 'labels.jsonl'} cannot be read ({exc})") from exc
    for number_in_file, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            case = _case_from_export_line(export_dir, line, hashes, heldout_percent, dict(manifest.get("studies") or {}))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetExportError(f"labels.jsonl line {number_in_file}: {exc!r}") from exc
        if case is None:
            continue
        cases.append(case)
        if not case.heldout:
            finetune.extend(labelled_slices(case))
    logger.info("dataset version %s: labels from %d studies, %d fine-tune slices, %d held-out cases",
                number, len(cases), len(finetune), sum(c.heldout for c in cases))
    return ReviewedLabels(cases, finetune, dataset={"version": number, "manifest_sha256": manifest_sha,
                                                    "studies": len(cases)})


def inscribed_ellipse(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask of the ellipse inscribed in ``box`` (x0, y0, x1, y1; pixel centres inside)."""
    x0, y0, x1, y1 = box
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ry, rx = max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
    return ((rows + 0.5 - cy) / ry) ** 2 + ((cols + 0.5 - cx) / rx) ** 2 <= 1.0


def _slice_hu(path: Path) -> np.ndarray:
    dataset = pydicom.dcmread(path)
    return (dataset.pixel_array.astype(np.float32) * float(getattr(dataset, "RescaleSlope", 1.0))
            + float(getattr(dataset, "RescaleIntercept", 0.0)))


# ---------------------------------------------------------------------------------------------
# Synthetic data and evaluation on reviewed cases
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetrainConfig:
    """Knobs of one retraining run; the defaults are the production schedule."""

    seed: int = 0
    steps: int = 300
    batch_size: int = 16
    patch_size: int = 96
    learning_rate: float = 1e-3
    reviewed_fraction: float = 0.5  # share of patches drawn from reviewed slices
    synthetic_train_phantoms: int = 16
    synthetic_validation_phantoms: int = 8
    synthetic_heldout_phantoms: int = 12
    phantom_size: int = 256
    phantom_slices: int = 12
    heldout_percent: int = 30
    min_finetune_slices: int = 4
    margin: float = 0.0  # the gain's 95% CI lower bound must exceed this
    tolerance: float = 0.05
    # Calibration on held-out reviewed cases: refused when the 95% CI of the ECE change lies above
    # this (a few hundredths of ECE are binning noise on a handful of cases).
    calibration_tolerance: float = 0.02
    n_bootstrap: int = 1000
    threads: int = 2

    def make_phantom(self, seed: int, n_lesions: int | None = None) -> Phantom:
        return make_ct_phantom(seed, n_slices=self.phantom_slices, size=self.phantom_size, n_lesions=n_lesions)


def synthetic_slices(config: RetrainConfig, grid: PhysicalGrid | None = None) -> list[LabelledSlice]:
    """Base-data rehearsal: every slice of a few fixed-seed phantoms, with the ground-truth mask
    (on ``grid`` for a model that reads every grid)."""
    out = []
    half = CONTEXT_SLICES // 2
    for k in range(config.synthetic_train_phantoms):
        phantom = config.make_phantom(RETRAIN_SYNTHETIC_SEED_BASE + config.seed * 100 + k)
        volume = phantom.volume_hu.astype(np.float32)
        n = volume.shape[0]
        spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
        for index in range(n):
            neighbours = [min(max(index + d, 0), n - 1) for d in range(-half, half + 1)]
            mask = phantom.lesion_mask[index]
            ys, xs = np.nonzero(mask)
            focus = [(int(ys[i]), int(xs[i])) for i in np.linspace(0, ys.size - 1, min(ys.size, 8)).astype(int)] if ys.size else []
            out.append(on_grid(volume, index, mask, focus, spacing, phantom.slice_thickness_mm, grid) if grid is not None
                       else LabelledSlice(volume[neighbours], mask.copy(), focus))
    return out


@dataclass
class ReviewedMetrics:
    """Held-out reviewed cases, scored against the radiologists' final boxes."""

    n_cases: int
    n_lesions: int
    froc_sensitivity_at_4fp: float
    froc_sensitivity_at_1fp: float
    mean_false_positives_per_scan: float
    sensitivity_by_size_at_4fp: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _hits(detection: Detection, label: LabelBox) -> bool:
    """The detection spans the label's slice and its centre is inside the box (or vice versa)."""
    if not detection.first_slice <= label.slice_index <= detection.last_slice:
        return False
    x0, y0, x1, y1 = label.box
    cx, cy = detection.centre_xy
    if x0 <= cx < x1 and y0 <= cy < y1:
        return True
    dx0, dy0, dx1, dy1 = detection.bbox
    bx, by = (x0 + x1) / 2, (y0 + y1) / 2
    return dx0 <= bx < dx1 and dy0 <= by < dy1


@dataclass(frozen=True)
class UnitOutcome:
    """One held-out scan or reviewed case: each detection's confidence and the index of the lesion
    it hits (-1: false positive); the unit the promotion bootstrap resamples."""

    confidences: tuple[float, ...]
    hits: tuple[int, ...]
    n_lesions: int


def sensitivity_at(units: Sequence[UnitOutcome], fp_per_scan: float = 4.0) -> float:
    """FROC sensitivity at ``fp_per_scan`` over ``units`` (a repeated unit counts again); NaN without lesions."""
    n_lesions = sum(u.n_lesions for u in units)
    if n_lesions == 0:
        return float("nan")
    # Vectorised ``froc_curve`` + ``sensitivity_at_fp_rate`` (the bootstrap calls this thousands of times).
    conf = np.array([c for u in units for c in u.confidences], dtype=np.float64)
    ids = np.array([p * 1000 + h if h >= 0 else -1 for p, u in enumerate(units) for h in u.hits], dtype=np.int64)
    order = np.argsort(-conf, kind="mergesort")
    conf, ids = conf[order], ids[order]
    first = np.zeros(ids.size, dtype=bool)
    positive = np.flatnonzero(ids >= 0)
    first[positive[np.unique(ids[positive], return_index=True)[1]]] = True
    last_of_tie = np.r_[conf[1:] != conf[:-1], True] if conf.size else np.zeros(0, dtype=bool)
    fp_rate = np.r_[0.0, np.cumsum(ids < 0)[last_of_tie] / len(units)]
    sensitivity = np.r_[0.0, np.cumsum(first)[last_of_tie] / n_lesions]
    return float(sensitivity[np.searchsorted(fp_rate, fp_per_scan, side="right") - 1])


def reviewed_outcomes(detector: LesionDetector, cases: Sequence[ReviewedCase]) -> list[UnitOutcome]:
    out = []
    for case in cases:
        detections = detector.detect(read_ct_volume(case.instance_paths))
        hits = [next((i for i, label in enumerate(case.positives) if _hits(d, label)), -1) for d in detections]
        out.append(UnitOutcome(tuple(d.confidence for d in detections), tuple(hits), len(case.positives)))
    return out


def evaluate_reviewed(detector: LesionDetector, cases: Sequence[ReviewedCase],
                      outcomes: Sequence[UnitOutcome] | None = None) -> ReviewedMetrics | None:
    """FROC on held-out reviewed cases: positives are the final boxes; every other detection,
    including one on a rejected box, is a false positive. None when no positive is held out."""
    confidences: list[float] = []
    lesion_ids: list[int] = []
    sizes: dict[int, str] = {}
    outcomes = outcomes if outcomes is not None else reviewed_outcomes(detector, cases)
    for scan, (case, outcome) in enumerate(zip(cases, outcomes, strict=True)):
        for i, label in enumerate(case.positives):
            x0, y0, x1, y1 = label.box
            diameter = max((x1 - x0) * case.pixel_spacing_mm[1], (y1 - y0) * case.pixel_spacing_mm[0])
            sizes[scan * 1000 + i] = next(name for name, lo, hi in SIZE_GROUPS if lo <= diameter < hi)
        for confidence, hit in zip(outcome.confidences, outcome.hits, strict=True):
            confidences.append(confidence)
            lesion_ids.append(scan * 1000 + hit if hit >= 0 else -1)
    if not sizes:
        return None
    points = froc_curve(confidences, lesion_ids, len(sizes), len(cases))
    sens4, thr4 = sensitivity_at_fp_rate(points, 4.0)
    sens1, _ = sensitivity_at_fp_rate(points, 1.0)
    found = {lid for c, lid in zip(confidences, lesion_ids, strict=True) if lid >= 0 and c >= thr4}
    by_size: dict[str, float] = {}
    for group in sorted(set(sizes.values())):
        ids = [lid for lid, g in sizes.items() if g == group]
        by_size[group] = round(sum(lid in found for lid in ids) / len(ids), 4)
    return ReviewedMetrics(len(cases), len(sizes), sens4, sens1, points[-1].false_positives_per_scan, by_size)


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------

def fine_tune(model: LesionUNet, reviewed: Sequence[LabelledSlice], synthetic: Sequence[LabelledSlice],
              config: RetrainConfig) -> float:
    """Fine-tune ``model`` in place; returns the mean loss of the last 20% of steps."""
    if config.patch_size % 8:
        raise RetrainingError(f"patch_size must be a multiple of 8, got {config.patch_size}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 4242])
    pools = [slice_pool(reviewed, config.patch_size), slice_pool(synthetic, config.patch_size) if synthetic else None]
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()  # a few hundred small batches would only add noise to the running statistics
    losses = []
    for _ in range(config.steps):
        xs, ys = [], []
        for _ in range(config.batch_size):
            from_reviewed = pools[1] is None or rng.random() < config.reviewed_fraction
            x, y = draw_patch(pools[0] if from_reviewed else pools[1], config.patch_size, rng)
            xs.append(x)
            ys.append(y)
        loss = detection_loss(model(torch.stack(xs)), torch.stack(ys)[:, None])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-max(1, len(losses) // 5):]
    return float(sum(tail) / len(tail))


# ---------------------------------------------------------------------------------------------
# Candidate, evaluation and the promotion rule
# ---------------------------------------------------------------------------------------------

@dataclass
class VersionScores:
    synthetic: EvaluationMetrics
    reviewed: ReviewedMetrics | None
    # Per held-out unit, for the paired bootstrap of the promotion rule (same units for both versions).
    synthetic_units: list[UnitOutcome] = field(default_factory=list)
    reviewed_units: list[UnitOutcome] = field(default_factory=list)

    @property
    def primary(self) -> float:
        """Mean FROC sensitivity at 4 FP/scan over the synthetic and reviewed held-out sets."""
        if self.reviewed is None:
            return self.synthetic.froc_sensitivity_at_4fp
        return (self.synthetic.froc_sensitivity_at_4fp + self.reviewed.froc_sensitivity_at_4fp) / 2

    def to_json(self) -> dict[str, Any]:
        return {"primary": round(self.primary, 4), "synthetic_heldout": self.synthetic.to_json(),
                "reviewed_heldout": self.reviewed.to_json() if self.reviewed else None}


@dataclass(frozen=True)
class CalibrationCheck:
    """Calibration of both versions re-checked on the held-out reviewed cases (never trained on):
    every detection is an outcome, 1 when it hits a box the radiologist kept (accepted, edited or
    added), 0 otherwise (a rejected box, or a place the radiologist did not mark on a signed
    report). ECE with 10 bins; 95% CIs by bootstrap over cases, the change paired (both versions
    on the same resample)."""

    n_cases: int
    candidate_detections: int
    active_detections: int
    candidate_ece: float
    candidate_ci95: tuple[float, float]
    active_ece: float
    active_ci95: tuple[float, float]
    change_ci95: tuple[float, float]  # candidate minus active
    tolerance: float

    @property
    def worse(self) -> bool:
        """Worse beyond the interval: even its lower bound is a rise above ``tolerance``."""
        return self.change_ci95[0] > self.tolerance

    def describe(self) -> str:
        return (f"calibration on {self.n_cases} held-out reviewed cases: ECE {self.active_ece:.3f} "
                f"(95% CI {self.active_ci95[0]:.3f}-{self.active_ci95[1]:.3f}) -> {self.candidate_ece:.3f} "
                f"(95% CI {self.candidate_ci95[0]:.3f}-{self.candidate_ci95[1]:.3f}), change 95% CI "
                f"{self.change_ci95[0]:+.3f} to {self.change_ci95[1]:+.3f}")

    def to_json(self) -> dict[str, Any]:
        return {"n_cases": self.n_cases, "candidate_detections": self.candidate_detections,
                "active_detections": self.active_detections,
                "candidate_ece": round(self.candidate_ece, 4), "candidate_ece_ci95": [round(v, 4) for v in self.candidate_ci95],
                "active_ece": round(self.active_ece, 4), "active_ece_ci95": [round(v, 4) for v in self.active_ci95],
                "change_ci95": [round(v, 4) for v in self.change_ci95], "tolerance": self.tolerance,
                "worse": self.worse}


def _ece_of(units: Sequence[UnitOutcome]) -> float:
    return expected_calibration_error([c for u in units for c in u.confidences], [h >= 0 for u in units for h in u.hits])


def reviewed_calibration(candidate: Sequence[UnitOutcome], active: Sequence[UnitOutcome], *, tolerance: float = 0.0,
                         n_bootstrap: int = 1000, seed: int = 0) -> CalibrationCheck | None:
    """The ``CalibrationCheck`` of two versions on the same held-out reviewed cases; None without
    any (or when either version made no detection there: nothing to be calibrated)."""
    if not candidate or len(candidate) != len(active):
        return None
    if not any(u.confidences for u in candidate) or not any(u.confidences for u in active):
        return None
    rng = np.random.default_rng([seed, 9173])
    n = len(candidate)
    new, old, change = [], [], []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        c = _ece_of([candidate[i] for i in idx])
        a = _ece_of([active[i] for i in idx])
        new.append(c)
        old.append(a)
        change.append(c - a)

    def interval(values: list[float], point: float) -> tuple[float, float]:
        if not values:
            return point, point
        low, high = np.percentile(values, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
        return float(low), float(high)

    candidate_ece, active_ece = _ece_of(candidate), _ece_of(active)
    return CalibrationCheck(
        n_cases=n, candidate_detections=sum(len(u.confidences) for u in candidate),
        active_detections=sum(len(u.confidences) for u in active),
        candidate_ece=candidate_ece, candidate_ci95=interval(new, candidate_ece),
        active_ece=active_ece, active_ci95=interval(old, active_ece),
        change_ci95=interval(change, candidate_ece - active_ece), tolerance=tolerance,
    )


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    gain: float = 0.0
    gain_ci95: tuple[float, float] = (0.0, 0.0)
    guard_failures: tuple[str, ...] = ()  # the synthetic guard's findings, each with its numbers
    calibration: CalibrationCheck | None = None  # re-checked on held-out reviewed cases


def _primary(synthetic: Sequence[UnitOutcome], reviewed: Sequence[UnitOutcome]) -> float:
    parts = [v for v in (sensitivity_at(synthetic), sensitivity_at(reviewed) if reviewed else float("nan"))
             if not np.isnan(v)]
    return float(np.mean(parts)) if parts else float("nan")


def gain_confidence_interval(candidate: VersionScores, active: VersionScores, *, n_bootstrap: int = 1000,
                             seed: int = 0) -> tuple[float, float]:
    """95% CI of the primary metric's gain by a paired bootstrap: the held-out synthetic scans and
    reviewed cases are resampled (each set on its own), and both versions are scored on the same
    resample. Without per-unit outcomes the interval is the point gain (no evidence of spread)."""
    gain = candidate.primary - active.primary
    if not candidate.synthetic_units or len(candidate.synthetic_units) != len(active.synthetic_units):
        return gain, gain
    rng = np.random.default_rng([seed, 4711])
    n_syn, n_rev = len(candidate.synthetic_units), len(candidate.reviewed_units)
    reviewed_paired = n_rev > 0 and n_rev == len(active.reviewed_units)
    gains = []
    for _ in range(n_bootstrap):
        s_idx = rng.integers(0, n_syn, n_syn)
        r_idx = rng.integers(0, n_rev, n_rev) if reviewed_paired else np.zeros(0, dtype=int)
        new = _primary([candidate.synthetic_units[i] for i in s_idx], [candidate.reviewed_units[i] for i in r_idx])
        old = _primary([active.synthetic_units[i] for i in s_idx], [active.reviewed_units[i] for i in r_idx])
        if not (np.isnan(new) or np.isnan(old)):
            gains.append(new - old)
    if not gains:
        return gain, gain
    low, high = np.percentile(gains, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def synthetic_guard(candidate: VersionScores, active: VersionScores, *, tolerance: float) -> list[str]:
    """What the synthetic ground truth says against the candidate: its sensitivity on the cycle's
    held-out phantoms, overall or in a size group, fell by more than ``tolerance``. Labels cannot
    argue with it: a labeller who rejects true lesions teaches the candidate to miss lesions the
    phantoms know are there, however well the candidate then fits those labels."""
    checks: list[tuple[str, float, float]] = [
        ("sensitivity@4FP", candidate.synthetic.froc_sensitivity_at_4fp, active.synthetic.froc_sensitivity_at_4fp)]
    for group, value in active.synthetic.sensitivity_by_size_at_4fp.items():
        # A group of n lesions moves by 1/n per lesion: it is checked only where the tolerance is
        # wider than one lesion, else a single lesion's luck would decide.
        if active.synthetic.lesions_by_size.get(group, 0) * tolerance >= 1.0:
            checks.append((group, candidate.synthetic.sensitivity_by_size_at_4fp.get(group, 0.0), value))
    return [f"synthetic {name} fell {old:.3f} -> {new:.3f}" for name, new, old in checks if new < old - tolerance]


def decide_promotion(candidate: VersionScores, active: VersionScores, *, margin: float, tolerance: float,
                     n_bootstrap: int = 1000, calibration_tolerance: float = 0.02) -> PromotionDecision:
    """The promotion rule of the module docstring, with every number in the reason."""
    guard = synthetic_guard(candidate, active, tolerance=tolerance)
    problems = [f"synthetic guard: {', '.join(guard)} (tolerance {tolerance})"] if guard else []
    if candidate.reviewed is not None and active.reviewed is not None:
        checks = [("reviewed sensitivity@4FP", candidate.reviewed.froc_sensitivity_at_4fp, active.reviewed.froc_sensitivity_at_4fp)]
        checks += [(f"reviewed {group}", candidate.reviewed.sensitivity_by_size_at_4fp.get(group, 0.0), value)
                   for group, value in active.reviewed.sensitivity_by_size_at_4fp.items()]
        problems += [f"{name} fell {old:.3f} -> {new:.3f} (tolerance {tolerance})"
                     for name, new, old in checks if new < old - tolerance]
    gain = candidate.primary - active.primary
    low, high = gain_confidence_interval(candidate, active, n_bootstrap=n_bootstrap)
    summary = (f"primary (mean FROC sensitivity@4FP synthetic+reviewed) {active.primary:.3f} -> {candidate.primary:.3f}, "
               f"gain {gain:+.3f} (95% CI {low:+.3f} to {high:+.3f})")
    if not low > margin:
        problems.append(f"{summary}: the CI's lower bound is not above {margin}")
    calibration = reviewed_calibration(candidate.reviewed_units, active.reviewed_units, tolerance=calibration_tolerance,
                                       n_bootstrap=n_bootstrap)
    if calibration is not None and calibration.worse:
        problems.append(f"{calibration.describe()}: worse beyond its CI (lower bound above {calibration_tolerance})")
    decision = dict(gain=gain, gain_ci95=(low, high), guard_failures=tuple(guard), calibration=calibration)
    if problems:
        return PromotionDecision(False, "refused: " + "; ".join(problems), **decision)  # type: ignore[arg-type]
    checked = f"; {calibration.describe()}" if calibration is not None else "; no held-out reviewed detections to re-check calibration"
    return PromotionDecision(True, f"promoted: {summary} > {margin}; synthetic guard and reviewed checks "
                                   f"within tolerance {tolerance}{checked}", **decision)  # type: ignore[arg-type]


@dataclass
class RetrainingInputs:
    parent_id: int
    parent_label: str
    parent_weights_path: Path
    labels: ReviewedLabels
    version: str


@dataclass
class CandidateResult:
    inputs: RetrainingInputs
    weights_path: Path
    candidate: VersionScores
    active: VersionScores
    decision: PromotionDecision
    wall_time_s: float


def prepare_retraining(session: Session, storage_dir: Path, config: RetrainConfig,
                       name: str = DEFAULT_MODEL_NAME, *, dataset_dir: Path | None = None) -> RetrainingInputs | None:
    """Read the active version and the labels (the signed reports', or with `dataset_dir` an exported
    research dataset version's); None when there is nothing new to learn from."""
    active = active_model_version(session, name)
    if active is None:
        # A new installation before `hospital ai register`: nothing to fine-tune, not a failure.
        logger.warning("retraining skipped: no active %s version to fine-tune from", name)
        return None
    if dataset_dir is not None:
        labels = labels_from_dataset_export(dataset_dir, heldout_percent=config.heldout_percent)
    else:
        labels = collect_labels(session, storage_dir, heldout_percent=config.heldout_percent)
    if len(labels.finetune) < config.min_finetune_slices:
        logger.info("retraining skipped: %d labelled slices, %d needed", len(labels.finetune), config.min_finetune_slices)
        return None
    digest = labels.digest()
    for version in session.scalars(select(ModelVersion).where(ModelVersion.name == name)):
        if (version.manifest or {}).get("retraining", {}).get("labels_digest") == digest:
            logger.info("retraining skipped: %s was already trained on these labels", version.label)
            return None
    versions = session.scalars(select(ModelVersion.version).where(ModelVersion.name == name)).all()
    next_number = max((int(v) for v in versions if v.isdigit()), default=1) + 1
    return RetrainingInputs(active.id, active.label, Path(active.weights_path), labels, str(next_number))


def load_model(weights_path: Path) -> tuple[LesionUNet, dict[str, Any]]:
    manifest = json.loads(manifest_path_for(weights_path).read_text())
    if manifest.get("sha256") != sha256_of_file(weights_path):
        raise RetrainingError(f"{weights_path} does not match its manifest's sha256")
    arch = manifest.get("architecture", {})
    model = LesionUNet(int(arch.get("in_channels", CONTEXT_SLICES * len(WINDOWS))), tuple(arch.get("widths", (8, 16, 32, 48))))
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model, manifest


def score(detector: LesionDetector, labels: ReviewedLabels, config: RetrainConfig, heldout_seeds: Sequence[int]) -> VersionScores:
    runs = run_on_phantoms(detector, heldout_seeds, config.make_phantom)
    synthetic_units = [UnitOutcome(tuple(d.confidence for d in detections), tuple(matches), len(phantom.lesions))
                       for phantom, _, detections, matches in runs]
    reviewed_units = reviewed_outcomes(detector, labels.heldout)
    return VersionScores(
        synthetic=metrics_from_runs(runs),
        reviewed=evaluate_reviewed(detector, labels.heldout, reviewed_units),
        synthetic_units=synthetic_units, reviewed_units=reviewed_units,
    )


def train_candidate(inputs: RetrainingInputs, out_dir: Path, config: RetrainConfig,
                    name: str = DEFAULT_MODEL_NAME) -> CandidateResult:
    """Fine-tune, calibrate, evaluate candidate and parent, decide; writes weights + manifest."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    model, parent_manifest = load_model(inputs.parent_weights_path)
    active_detector = LesionDetector.load(inputs.parent_weights_path)
    grid = active_detector.grid
    finetune = inputs.labels.finetune if grid is None else [
        item for case in inputs.labels.cases if not case.heldout for item in labelled_slices(case, grid)]
    final_loss = fine_tune(model, finetune, synthetic_slices(config, grid), config)
    validation, heldout_seeds = cycle_seeds(inputs.version, config.synthetic_validation_phantoms,
                                            config.synthetic_heldout_phantoms)
    threshold = float(parent_manifest.get("candidate_threshold", DEFAULT_CANDIDATE_THRESHOLD))
    calibration = calibrate(LesionDetector.from_model(model, threshold=threshold, grid=grid), validation, config.make_phantom) \
        if config.synthetic_validation_phantoms else Calibration(size_unit="mm3" if grid else "voxels")
    candidate_detector = LesionDetector.from_model(model, calibration=calibration, threshold=threshold, grid=grid)
    candidate_scores = score(candidate_detector, inputs.labels, config, heldout_seeds)
    active_scores = score(active_detector, inputs.labels, config, heldout_seeds)
    decision = decide_promotion(candidate_scores, active_scores, margin=config.margin, tolerance=config.tolerance,
                                n_bootstrap=config.n_bootstrap, calibration_tolerance=config.calibration_tolerance)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}-v{inputs.version}.pt"
    torch.save(model.state_dict(), weights_path)
    wall = time.perf_counter() - started
    manifest = {
        **{k: v for k, v in parent_manifest.items() if k in ("architecture", "working_size", "preprocessing", "hit_rule", "intended_use")},
        "model_name": name,
        "version": inputs.version,
        "weights_file": weights_path.name,
        "sha256": sha256_of_file(weights_path),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "candidate_threshold": threshold,
        "calibration": calibration.to_json(),
        "parent": {"label": inputs.parent_label, "sha256": parent_manifest.get("sha256")},
        "retraining": {
            "config": asdict(config),
            "labels_digest": inputs.labels.digest(),
            "reviewed_cases": len(inputs.labels.cases),
            "finetune_slices": len(inputs.labels.finetune),
            "heldout_cases": len(inputs.labels.heldout),
            "final_loss": round(final_loss, 5),
            "dataset": inputs.labels.dataset,
            "calibration_seeds": [validation[0], validation[-1]] if len(validation) else [],
            "heldout_seeds": [heldout_seeds[0], heldout_seeds[-1]] if len(heldout_seeds) else [],
            "wall_time_s": round(wall, 1),
        },
        "heldout_metrics": candidate_scores.synthetic.to_json(),
        "evaluation": {"candidate": candidate_scores.to_json(), "active": active_scores.to_json()},
        "decision": {"promote": decision.promote, "reason": decision.reason, "gain": round(decision.gain, 4),
                     "gain_ci95": [round(v, 4) for v in decision.gain_ci95],
                     "synthetic_guard": list(decision.guard_failures),
                     "reviewed_calibration": decision.calibration.to_json() if decision.calibration else None},
    }
    manifest_path_for(weights_path).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("candidate %s v%s: %s (%.0f s)", name, inputs.version, decision.reason, wall)
    return CandidateResult(inputs, weights_path, candidate_scores, active_scores, decision, wall)


def record_candidate(session: Session, result: CandidateResult) -> ModelVersion:
    """Register the candidate; activate it if the rule said so, else keep it as rejected."""
    version = register_model_version(session, result.weights_path, activate=False)
    version.parent_version_id = result.inputs.parent_id
    version.decision_reason = result.decision.reason
    version.metrics = {"candidate": result.candidate.to_json(), "active": result.active.to_json(),
                       "reviewed_calibration": result.decision.calibration.to_json() if result.decision.calibration else None}
    if result.decision.promote:
        activate_model_version(session, version)
    else:
        version.status = ModelStatus.REJECTED
    session.flush()
    return version


def retrain(session: Session, storage_dir: Path, out_dir: Path, config: RetrainConfig | None = None, *,
            dataset_dir: Path | None = None) -> ModelVersion | None:
    """Collect labels (from signed reports, or from the research dataset export in `dataset_dir`),
    train and evaluate a candidate, record the decision (caller commits)."""
    config = config or RetrainConfig()
    inputs = prepare_retraining(session, storage_dir, config, dataset_dir=dataset_dir)
    if inputs is None:
        return None
    return record_candidate(session, train_candidate(inputs, out_dir, config))
