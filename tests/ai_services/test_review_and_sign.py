"""The radiologist's review: accept, reject, edit, add a missed finding, then sign."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import FindingReview, ReviewStatus
from hospital.models import JobRecord
from hospital.seed import DemoSeed
from tests.factories import make_preliminary_report


def test_review_every_finding_then_sign(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30), (50, 50, 60, 58), (70, 70, 80, 80)])
    db_session.commit()
    radiologist = as_role("radiologist")
    first, second, third = (f.id for f in report.findings)
    base = f"/api/reports/{report.id}/findings"

    blocked = radiologist.post(f"/api/reports/{report.id}/sign", json={})
    assert blocked.status_code == 409 and "no decision" in blocked.get_json()["detail"]

    assert radiologist.post(f"{base}/{first}/review", json={"decision": "accepted"}).get_json()["review_status"] == "accepted"
    assert radiologist.post(f"{base}/{second}/review", json={"decision": "rejected", "comment": "vessel"}).status_code == 200
    edited = radiologist.post(f"{base}/{third}/review", json={"decision": "edited", "box": [70, 70, 100, 90]}).get_json()
    # 30 columns x 0.7 mm vs 20 rows x 0.8 mm: the longer side is 21 mm.
    assert edited["box"] == [70, 70, 100, 90] and edited["diameter_mm"] == 21.0
    added = radiologist.post(base, json={"slice_index": 4, "box": [5, 5, 15, 25]})
    assert added.status_code == 201 and added.get_json()["source"] == "radiologist"

    signed = radiologist.post(f"/api/reports/{report.id}/sign", json={}).get_json()
    assert signed["status"] == "final"
    assert "3 abnormalities confirmed" in signed["conclusion"]
    assert radiologist.post(f"{base}/{first}/review", json={"decision": "rejected"}).status_code == 409

    reviews = db_session.scalars(select(FindingReview).order_by(FindingReview.id)).all()
    assert [r.decision for r in reviews] == [ReviewStatus.ACCEPTED, ReviewStatus.REJECTED, ReviewStatus.EDITED, ReviewStatus.ACCEPTED]
    assert reviews[2].previous["x1"] == 80  # the box before the edit is kept as a label
    handlers = db_session.scalars(select(JobRecord.handler).where(JobRecord.event == "ai.report_signed")).all()
    assert sorted(handlers) == ["ai_services.jobs.make_report_outputs", "ai_services.jobs.tell_report_signed",
                                "followup.jobs.open_consultation_for_report",
                                "integration.jobs.notify_report_signed", "integration.jobs.send_results_for_report",
                                "research.jobs.record_contribution_for_report"]


def test_bad_review_input_is_refused(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    db_session.commit()
    radiologist = as_role("radiologist")
    url = f"/api/reports/{report.id}/findings/{report.findings[0].id}/review"
    assert radiologist.post(url, json={"decision": "maybe"}).status_code == 400
    assert radiologist.post(url, json={"decision": "edited"}).status_code == 400
    assert radiologist.post(url, json={"decision": "edited", "box": [30, 30, 10, 10]}).status_code == 400
    assert radiologist.post(f"/api/reports/{report.id}/findings", json={"slice_index": 99, "box": [1, 1, 2, 2]}).status_code == 400
    assert as_role("clinician").post(url, json={"decision": "accepted"}).status_code == 403


def test_patient_sees_the_report_only_once_signed(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    report = make_preliminary_report(db_session, demo, [])
    db_session.commit()
    patient = as_role("patient")
    assert patient.get(f"/api/reports/{report.id}").status_code == 404
    assert patient.get("/api/reports").get_json() == []
    assert as_role("radiologist").post(f"/api/reports/{report.id}/sign", json={"conclusion": "Normal study."}).status_code == 200
    seen = patient.get(f"/api/reports/{report.id}").get_json()
    assert seen["status"] == "final" and seen["conclusion"] == "Normal study."
    assert as_role("patient2").get(f"/api/reports/{report.id}").status_code == 403
