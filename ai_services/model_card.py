"""The model card: what a reader of an AI result must know about the model that made it.

Read from the ``model_card`` block of the version's manifest (written with the weights, next to the
metrics it quotes), never composed in templates, so every number on the report page and in FHIR is
one the evaluation recorded. Pure: a manifest in, a frozen ``ModelCard`` out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

SYNTHETIC_ONLY = "synthetic data only"


@dataclass(frozen=True)
class OperatingPoint:
    description: str
    sensitivity: float
    sensitivity_ci95: tuple[float, float] | None
    false_positives_per_scan: float
    false_positives_ci95: tuple[float, float] | None
    evaluated_on: str
    ci_methods: tuple[str, ...]

    @property
    def sensitivity_text(self) -> str:
        return f"{self.sensitivity:.2f}" + (f" (95% CI {self.sensitivity_ci95[0]:.2f}-{self.sensitivity_ci95[1]:.2f})"
                                            if self.sensitivity_ci95 else "")

    @property
    def false_positives_text(self) -> str:
        return f"{self.false_positives_per_scan:.1f}" + (
            f" (95% CI {self.false_positives_ci95[0]:.2f}-{self.false_positives_ci95[1]:.2f})" if self.false_positives_ci95 else "")


@dataclass(frozen=True)
class ModelCard:
    model: str  # "lesion-detector 1"
    intended_use: str
    training_data: str
    trained_on_synthetic_only: bool
    operating_point: OperatingPoint | None
    caveats: tuple[str, ...]
    known_failure_modes: tuple[str, ...]

    def text(self) -> str:
        """The card as plain text (FHIR Device.note and the report's presentedForm)."""
        lines = [f"AI model card: {self.model}", f"Intended use: {self.intended_use}",
                 f"Training data: {self.training_data}"]
        if self.trained_on_synthetic_only:
            lines.append("Trained on synthetic data only.")
        point = self.operating_point
        if point is not None:
            lines.append(f"Operating point: {point.description}: sensitivity {point.sensitivity_text}, "
                         f"false positives per scan {point.false_positives_text}; evaluated on {point.evaluated_on}.")
            lines.extend(f"  {method}" for method in point.ci_methods)
        lines.extend(f"Caveat: {caveat}" for caveat in self.caveats)
        lines.extend(f"Known failure mode: {mode}" for mode in self.known_failure_modes)
        return "\n".join(lines)


def _interval(value: Any) -> tuple[float, float] | None:
    if not value:
        return None
    low, high = (float(v) for v in value)
    return low, high


def model_card_from_manifest(name: str, version: str, manifest: Mapping[str, Any] | None) -> ModelCard | None:
    """The card of a version, or None when its manifest has none (a retrained candidate's card is
    not inherited: its parent's numbers are not its own)."""
    card = (manifest or {}).get("model_card")
    if not card:
        return None
    point = card.get("operating_point")
    intended = (manifest or {}).get("intended_use") or {}
    return ModelCard(
        model=f"{name} {version}",
        intended_use=str(card["intended_use"]),
        training_data=str(card.get("training_data", "")),
        trained_on_synthetic_only=intended.get("trained_on") == SYNTHETIC_ONLY,
        operating_point=OperatingPoint(
            description=str(point["description"]),
            sensitivity=float(point["sensitivity"]),
            sensitivity_ci95=_interval(point.get("sensitivity_ci95")),
            false_positives_per_scan=float(point["false_positives_per_scan"]),
            false_positives_ci95=_interval(point.get("false_positives_per_scan_ci95")),
            evaluated_on=str(point["evaluated_on"]),
            ci_methods=tuple(str(point[k]) for k in ("sensitivity_ci_method", "false_positives_ci_method") if point.get(k)),
        ) if point else None,
        caveats=tuple(str(c) for c in card.get("metrics_caveats", ())),
        known_failure_modes=tuple(str(m) for m in card.get("known_failure_modes", ())),
    )
