"""The report page's slice viewer: any slice of the analysed series as PNG, and the radiologist's
"add a missed finding" form (cookie session and CSRF token, as a browser sends it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from ai_services.models import AnalysisJob, DiagnosticReport, FindingSource, ReviewStatus
from hospital.seed import DEMO_PASSWORD, DemoSeed
from tests.factories import make_preliminary_report, store_report_slices


def store_slices(session: Session, app: Flask, demo: DemoSeed, report: DiagnosticReport) -> None:
    """Write a small CT series whose SOP Instance UIDs are the analysed ones, and index it."""
    job = session.get(AnalysisJob, report.analysis_job_id)
    assert job is not None
    volume = np.full((len(job.slice_sop_instance_uids), 32, 32), -800.0, dtype=np.float32)
    store_report_slices(session, Path(app.config["DICOM_STORAGE_DIR"]), report, volume,
                        pixel_spacing_mm=0.8, slice_thickness_mm=1.0)


def csrf_token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def sign_in(client: FlaskClient, username: str) -> None:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": DEMO_PASSWORD, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)


def test_any_slice_renders_as_png_for_those_who_may_see_the_report(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    radiologist = as_role("radiologist")
    base = f"/reports/{report.id}/slices"

    for index in (0, 5, 9):  # the finding's slice and two without findings
        response = radiologist.get(f"{base}/{index}.png?window=bone")
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert response.data.startswith(b"\x89PNG") and response.headers["Cache-Control"] == "private, no-store"
    with_box = radiologist.get(f"{base}/0.png").data
    without_box = radiologist.get(f"{base}/1.png").data
    assert with_box != without_box, "the finding on slice 0 is drawn over it"

    assert radiologist.get(f"{base}/10.png").status_code == 404
    assert radiologist.get(f"{base}/-1.png").status_code == 404
    assert radiologist.get(f"{base}/0.png?window=brain").status_code == 400
    assert radiologist.get("/reports/999999/slices/0.png").status_code == 404
    assert as_role("patient2").get(f"{base}/0.png").status_code == 403
    assert as_role("clinician").get(f"{base}/3.png").status_code == 200


def test_report_page_shows_the_viewer_and_the_missed_finding_form(
    client: FlaskClient, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12), (6, 6, 10, 10)])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    sign_in(client, "radiologist")

    page = client.get(f"/reports/{report.id}?slice=2").get_data(as_text=True)
    assert 'id="slice-viewer"' in page and 'data-count="10"' in page and 'data-index="1"' in page
    assert f'src="/reports/{report.id}/slices/1.png?window=lung"' in page
    # Without JavaScript, previous/next are links to the page on the neighbouring slice.
    assert f'href="/reports/{report.id}?window=lung&amp;slice=3#slice-viewer">Next' in page
    assert f'href="/reports/{report.id}?window=lung&amp;slice=1#slice-viewer">&larr; Previous' in page
    assert "js/slice_viewer.js" in page and "<script>" not in page  # no inline script under the CSP
    assert f"/reports/{report.id}/findings/add" in page
    assert 'class="key-image"' in page  # the key images stay for a page without JavaScript

    url = f"/reports/{report.id}/findings/add"
    form = {"slice": "6", "x0": "3", "y0": "5", "x1": "13", "y1": "15", "window": "bone", "comment": "missed"}
    assert client.post(url, data=form).status_code == 403  # no CSRF token
    added = client.post(url, data={**form, "csrf_token": csrf_token_of(page)})
    assert added.status_code == 302
    assert re.search(rf"/reports/{report.id}\?window=bone&slice=6#finding-\d+$", added.headers["Location"])
    db_session.expire_all()
    finding = db_session.get(DiagnosticReport, report.id).findings[-1]
    assert (finding.source, finding.slice_index, finding.review_status) == (FindingSource.RADIOLOGIST, 5, ReviewStatus.ACCEPTED)
    assert (finding.x0, finding.y0, finding.x1, finding.y1) == (3, 5, 13, 15)
    shown = client.get(added.headers["Location"]).get_data(as_text=True)
    assert f"Finding {finding.id} added on slice 6." in shown and "added by the radiologist" in shown

    token = csrf_token_of(shown)
    for bad in ({**form, "slice": "11"}, {**form, "x1": "2"}, {**form, "y0": "top"}, {**form, "slice": ""}):
        refused = client.post(url, data={**bad, "csrf_token": token})
        assert refused.status_code == 302
        assert "flash-error" in client.get(refused.headers["Location"]).get_data(as_text=True)
    db_session.expire_all()
    assert len(db_session.get(DiagnosticReport, report.id).findings) == 3


def test_only_the_radiologist_may_add_a_finding_through_the_page(
    client: FlaskClient, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    sign_in(client, "clinician")
    page = client.get(f"/reports/{report.id}").get_data(as_text=True)
    assert 'id="slice-viewer"' in page and "Add a missed finding" not in page
    response = client.post(f"/reports/{report.id}/findings/add",
                           data={"slice": "1", "x0": "1", "y0": "1", "x1": "5", "y1": "5", "csrf_token": csrf_token_of(page)})
    assert response.status_code == 403
