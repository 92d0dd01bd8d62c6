"""The study's images page without a browser: a withdrawal is asked about first (a page of its own
when no script confirmed it), a bad form is a clear message with nothing withdrawn, a confirmed one
withdraws through ingest, and another centre's staff cannot reach the page."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imaging_orders.archive.models import ImagingInstance, ImagingSeries, InstanceRejection
from tests.imaging_orders.test_dicomweb import app, no_jobs, other_centre_staff, stored  # noqa: F401 - fixtures
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def _withdrawn(db_session: Session) -> int:
    return int(db_session.scalar(select(func.count()).select_from(ImagingInstance).where(
        ImagingInstance.rejection_id.is_not(None))) or 0)


def test_a_withdrawal_asks_first_refuses_a_bad_form_and_then_withdraws(
    stored: dict[str, Any], client: FlaskClient, db_session: Session,  # noqa: F811
) -> None:
    series = db_session.scalars(select(ImagingSeries)).one()
    sign_in(client, "imaging_staff")
    url = f"/imaging-studies/{series.study_id}/instances"
    page = client.get(url).get_data(as_text=True)
    assert "3 images available" in page and "Rejected for Quality Reasons (113001)" in page
    form = {"csrf_token": csrf_token_of(page), "action": "withdraw", "series_id": str(series.id),
            "sop_instance_uid": str(stored["datasets"][1].SOPInstanceUID), "code": "113001"}

    asked = client.post(url, data=form)
    assert asked.status_code == 200 and "Please confirm" in asked.get_data(as_text=True)
    assert "Withdraw instance" in asked.get_data(as_text=True)
    bad = client.post(url, data={**form, "code": "999999", "confirmed": "yes"}, follow_redirects=True)
    assert "choose a reason for the withdrawal" in bad.get_data(as_text=True)
    assert _withdrawn(db_session) == 0

    done = client.post(url, data={**form, "confirmed": "yes"}, follow_redirects=True)

    assert "Withdrawn: instance" in done.get_data(as_text=True)
    assert "2 images available" in done.get_data(as_text=True)
    assert _withdrawn(db_session) == 1
    rejection = db_session.scalars(select(InstanceRejection)).one()
    assert rejection.rejected_by == "WEB:imaging_staff" and rejection.code_value == "113001"


def test_another_centres_staff_cannot_open_the_page(
    stored: dict[str, Any], client: FlaskClient, db_session: Session,  # noqa: F811
) -> None:
    series = db_session.scalars(select(ImagingSeries)).one()
    outsider = other_centre_staff(client, db_session)
    response = outsider.get(f"/imaging-studies/{series.study_id}/instances")
    assert response.status_code == 403
    assert "no access to this imaging study" in response.get_data(as_text=True)
