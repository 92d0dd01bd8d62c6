"""Drift monitoring: how the radiologists' decisions on each model version's findings at each
centre compare with the same version on the rest of the platform.

A model that holds up on the evaluation generator can still meet scanners, protocols and patients it
never saw, and that shows first in how radiologists treat its findings. For every model version and
every centre this counts, over signed reports (final or amended: the decisions are settled):

- the acceptance rate: AI findings accepted or edited, out of those accepted, edited or rejected;
- added misses per study: findings the radiologist drew that the model had not flagged;
- AI findings per scan;
- a histogram of the AI findings' confidences (ten bins of 0.1).

The statistical test, stated once: each figure of a centre is compared with the same version on
the rest of the platform (every other centre together), two-sided, and the centre is flagged as
drifting when p < ``DRIFT_ALPHA`` (0.01) for any of them. The acceptance rate uses the
two-proportion z-test (pooled); the per-study rates use the conditional test of two Poisson rates
(given the total count, the centre's share is binomial with its share of the studies; normal
approximation). A figure is tested only with ``MIN_DECIDED`` decided findings (acceptance) or
``MIN_STUDIES`` studies (rates) on both sides; below that it says "too few" instead of guessing.

The admin model page shows the table; ``hospital/metrics.py`` exports it as gauges at each scrape
(``hospital_ai_drift_*``), and ``deploy/prometheus/alerts.yml`` alerts on the flag.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from ai_services.models import (
    AnalysisJob,
    DiagnosticReport,
    Finding,
    FindingSource,
    ModelVersion,
    ReportStatus,
    ReviewStatus,
)
from hospital.models import Organization
from imaging_orders.archive.public import STUDY_CENTRES

logger = logging.getLogger(__name__)

DRIFT_ALPHA = 0.01
MIN_DECIDED = 20
MIN_STUDIES = 10
CONFIDENCE_BINS = 10
SIGNED = (ReportStatus.FINAL, ReportStatus.AMENDED)
ACCEPTED = (ReviewStatus.ACCEPTED, ReviewStatus.EDITED)
UNMATCHED_CENTRE = "no centre"


@dataclass
class DriftFigures:
    """Counts over signed reports of one model version (at one centre, or several together)."""

    studies: int = 0
    ai_findings: int = 0
    accepted: int = 0
    rejected: int = 0
    added: int = 0
    confidence_histogram: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)

    @property
    def decided(self) -> int:
        return self.accepted + self.rejected

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.decided if self.decided else None

    @property
    def added_per_study(self) -> float | None:
        return self.added / self.studies if self.studies else None

    @property
    def findings_per_scan(self) -> float | None:
        return self.ai_findings / self.studies if self.studies else None

    def add(self, other: DriftFigures) -> None:
        self.studies += other.studies
        self.ai_findings += other.ai_findings
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.added += other.added
        self.confidence_histogram = [a + b for a, b in zip(self.confidence_histogram, other.confidence_histogram, strict=True)]


@dataclass(frozen=True)
class DriftTest:
    """One figure of a centre against the rest of the platform."""

    figure: str
    centre_value: float | None
    reference_value: float | None
    z: float | None
    p_value: float | None  # None: too few data on one side to test

    @property
    def flagged(self) -> bool:
        return self.p_value is not None and self.p_value < DRIFT_ALPHA

    def describe(self) -> str:
        if self.p_value is None or self.centre_value is None or self.reference_value is None:
            return f"{self.figure}: too few data to test"
        return (f"{self.figure} {self.centre_value:.2f} vs {self.reference_value:.2f} on the rest of the platform "
                f"(z {self.z:+.2f}, p {self.p_value:.3g})")


@dataclass(frozen=True)
class CentreDrift:
    model_version_id: int
    model_name: str
    model_version: str
    centre_id: int | None
    centre_name: str
    figures: DriftFigures
    reference: DriftFigures  # the same version at every other centre
    tests: tuple[DriftTest, ...]

    @property
    def drifting(self) -> bool:
        return any(t.flagged for t in self.tests)

    @property
    def reason(self) -> str:
        flagged = [t.describe() for t in self.tests if t.flagged]
        return "; ".join(flagged) if flagged else "within the platform's range"


@dataclass(frozen=True)
class VersionDrift:
    model_version_id: int
    label: str
    platform: DriftFigures
    centres: tuple[CentreDrift, ...]


def _normal_p(z: float) -> float:
    """Two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def proportion_test(figure: str, hits: int, n: int, ref_hits: int, ref_n: int) -> DriftTest:
    """Two-proportion z-test (pooled variance), two-sided."""
    centre = hits / n if n else None
    reference = ref_hits / ref_n if ref_n else None
    if n < MIN_DECIDED or ref_n < MIN_DECIDED or centre is None or reference is None:
        return DriftTest(figure, centre, reference, None, None)
    pooled = (hits + ref_hits) / (n + ref_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / ref_n))
    if se == 0:
        return DriftTest(figure, centre, reference, 0.0, 1.0)
    z = (centre - reference) / se
    return DriftTest(figure, centre, reference, z, _normal_p(z))


def rate_test(figure: str, count: int, studies: int, ref_count: int, ref_studies: int) -> DriftTest:
    """Two Poisson rates (events per study): given the total, the centre's count is binomial with
    its share of the studies; normal approximation, two-sided."""
    centre = count / studies if studies else None
    reference = ref_count / ref_studies if ref_studies else None
    if studies < MIN_STUDIES or ref_studies < MIN_STUDIES or centre is None or reference is None:
        return DriftTest(figure, centre, reference, None, None)
    total = count + ref_count
    share = studies / (studies + ref_studies)
    if total == 0:
        return DriftTest(figure, centre, reference, 0.0, 1.0)
    z = (count - total * share) / math.sqrt(total * share * (1 - share))
    return DriftTest(figure, centre, reference, z, _normal_p(z))


def _confidence_bin_sql() -> ColumnElement[int]:
    """The confidence bin (ten of 0.1; 1.0 falls in the last; -1 when none) computed in SQL, so a
    scrape counts grouped rows instead of reading every finding."""
    edges = [(Finding.confidence < (k + 1) / CONFIDENCE_BINS, k) for k in range(CONFIDENCE_BINS - 1)]
    return case((Finding.confidence.is_(None), -1), *edges, else_=CONFIDENCE_BINS - 1)


def drift_report(session: Session) -> list[VersionDrift]:
    """Every model version with signed reports: the platform's figures and each centre's, tested."""
    figures: dict[tuple[int, int | None], DriftFigures] = {}
    signed = (
        select(DiagnosticReport.id.label("report_id"), AnalysisJob.model_version_id.label("version_id"),
               STUDY_CENTRES.c.organization_id.label("centre_id"))
        .join(AnalysisJob, DiagnosticReport.analysis_job_id == AnalysisJob.id)
        .join(STUDY_CENTRES, STUDY_CENTRES.c.study_id == DiagnosticReport.study_id)
        .where(DiagnosticReport.status.in_(SIGNED), AnalysisJob.model_version_id.is_not(None))
        .subquery()
    )
    for version_id, centre_id, count in session.execute(
        select(signed.c.version_id, signed.c.centre_id, func.count()).group_by(signed.c.version_id, signed.c.centre_id)
    ):
        figures[(version_id, centre_id)] = DriftFigures(studies=int(count))
    if not figures:
        return []
    bin_ = _confidence_bin_sql()
    rows = session.execute(
        select(signed.c.version_id, signed.c.centre_id, Finding.source, Finding.review_status, bin_, func.count())
        .join(signed, signed.c.report_id == Finding.report_id)
        .where(Finding.package_analysis_id.is_(None))  # the built-in model's drift, not a partner model's
        .group_by(signed.c.version_id, signed.c.centre_id, Finding.source, Finding.review_status, bin_)
    ).all()
    for version_id, centre_id, source, status, bin_index, count in rows:
        cell = figures[(version_id, centre_id)]
        if source is FindingSource.RADIOLOGIST:
            cell.added += count
            continue
        cell.ai_findings += count
        if status in ACCEPTED:
            cell.accepted += count
        elif status is ReviewStatus.REJECTED:
            cell.rejected += count
        if bin_index >= 0:
            cell.confidence_histogram[bin_index] += count

    versions = {v.id: v for v in session.scalars(
        select(ModelVersion).where(ModelVersion.id.in_({k[0] for k in figures})))}
    centre_ids = {k[1] for k in figures if k[1] is not None}
    names: dict[int, str] = {
        centre_id: name for centre_id, name in
        session.execute(select(Organization.id, Organization.name).where(Organization.id.in_(centre_ids)))}
    out = []
    for version_id in sorted(versions, key=lambda i: versions[i].created_at, reverse=True):
        version = versions[version_id]
        cells = {centre: cell for (vid, centre), cell in figures.items() if vid == version_id}
        platform = DriftFigures()
        for cell in cells.values():
            platform.add(cell)
        centres = []
        for centre_id, cell in sorted(cells.items(), key=lambda kv: names.get(kv[0], UNMATCHED_CENTRE) if kv[0] else UNMATCHED_CENTRE):
            rest = DriftFigures()
            for other, other_cell in cells.items():
                if other != centre_id:
                    rest.add(other_cell)
            tests = (
                proportion_test("acceptance rate", cell.accepted, cell.decided, rest.accepted, rest.decided),
                rate_test("added misses per study", cell.added, cell.studies, rest.added, rest.studies),
                rate_test("AI findings per scan", cell.ai_findings, cell.studies, rest.ai_findings, rest.studies),
            )
            centres.append(CentreDrift(
                version_id, version.name, version.version, centre_id,
                names.get(centre_id, UNMATCHED_CENTRE) if centre_id is not None else UNMATCHED_CENTRE,
                cell, rest, tests,
            ))
        out.append(VersionDrift(version_id, version.label, platform, tuple(centres)))
    return out


def drift_gauges(session: Session) -> Iterator[Metric]:
    """The drift table as Prometheus gauges, read at scrape time (labels: model, version, centre)."""
    labels = ["model", "version", "centre"]
    families: dict[str, GaugeMetricFamily] = {
        "studies": GaugeMetricFamily("hospital_ai_drift_signed_studies",
                                     "Signed reports analysed by the model version, per centre.", labels=labels),
        "acceptance": GaugeMetricFamily("hospital_ai_drift_acceptance_rate",
                                        "Share of decided AI findings the radiologists accepted or edited, per centre "
                                        "(absent without decided findings).", labels=labels),
        "added": GaugeMetricFamily("hospital_ai_drift_added_per_study",
                                   "Findings radiologists added (model misses) per signed study, per centre.",
                                   labels=labels),
        "findings": GaugeMetricFamily("hospital_ai_drift_findings_per_scan", "AI findings per signed study, per centre.",
                                      labels=labels),
        "confidence": GaugeMetricFamily("hospital_ai_drift_confidence_findings",
                                        "AI findings on signed reports per confidence bin (lower edge), per centre.",
                                        labels=[*labels, "bin"]),
        "flag": GaugeMetricFamily("hospital_ai_drift_flag",
                                  f"1 when a centre departs from the rest of the platform on the same model version "
                                  f"(two-sided tests, p < {DRIFT_ALPHA}; ai_services/drift.py).", labels=labels),
    }
    for version in drift_report(session):
        for centre in version.centres:
            values = [centre.model_name, centre.model_version, centre.centre_name]
            cell = centre.figures
            families["studies"].add_metric(values, cell.studies)
            for key, value in (("acceptance", cell.acceptance_rate), ("added", cell.added_per_study),
                               ("findings", cell.findings_per_scan)):
                if value is not None:
                    families[key].add_metric(values, value)
            for index, count in enumerate(cell.confidence_histogram):
                families["confidence"].add_metric([*values, f"{index / CONFIDENCE_BINS:.1f}"], count)
            families["flag"].add_metric(values, 1.0 if centre.drifting else 0.0)
    yield from families.values()


def histogram_bars(histogram: Sequence[int]) -> str:
    """A text sparkline of a confidence histogram, for the page (one block per bin)."""
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(histogram) if histogram else 0
    return "".join(blocks[math.ceil(8 * n / top)] if top else blocks[0] for n in histogram)
