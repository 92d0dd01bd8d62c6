"""Imaging staff withdraw a series from the study's images page with an IOCM reason (asked to
confirm first), the withdrawal is kept as a rejection note like one sent by a modality, the
images leave QIDO-RS, and a revert brings them back; the page passes the axe-core audit."""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from sqlalchemy import select

from hospital.db import get_db
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingStudy, InstanceRejection
from tests.browser.conftest import LiveSite, login
from tests.browser.test_accessibility import audit
from tests.imaging_orders.dicom_payloads import small_ct_study

pytestmark = pytest.mark.browser


def _live_uids(site: LiveSite) -> set[str]:
    with get_db(site.app).session() as session:
        return set(session.scalars(select(ImagingInstance.sop_instance_uid).where(ImagingInstance.rejection_id.is_(None))))


def test_staff_withdraw_a_series_from_the_page_and_revert_it(browser: Any, site: LiveSite) -> None:
    datasets = small_ct_study(patient_id="WD-0001", accession_number="WDACC1", n_slices=3)
    for ds in datasets:
        store_instance(site.app, ds, transfer_syntax_uid=None, calling_ae="PEERCT1")
    with get_db(site.app).session() as session:
        study_id = session.scalar(select(ImagingStudy.id))
    page = login(browser, site, "imaging_staff")
    page.goto(f"/imaging-studies/{study_id}/instances")
    assert audit(Axe(), page, "study images page") == []

    page.get_by_label("Reason").select_option("113038")
    dismissed: list[str] = []
    page.once("dialog", lambda d: (dismissed.append(d.message), d.dismiss()))
    page.get_by_role("button", name="Withdraw from series").click()
    assert "Withdraw the chosen images" in dismissed[0]
    assert _live_uids(site) == {str(ds.SOPInstanceUID) for ds in datasets}  # said no: nothing withdrawn

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Withdraw from series").click()
    page.get_by_text("Withdrawn: all 3 images").wait_for()
    with get_db(site.app).session() as session:
        [rejection] = session.scalars(select(InstanceRejection)).all()
        assert (rejection.code_value, rejection.withdrawn_count) == ("113038", 3)
        assert rejection.rejected_by == "WEB:imaging_staff"
    live = _live_uids(site)
    assert not live & {str(ds.SOPInstanceUID) for ds in datasets}
    assert page.locator("#withdrawals").get_by_text("Incorrect Modality Worklist Entry").is_visible()
    assert audit(Axe(), page, "study images page after a withdrawal") == []

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=f"Revert withdrawal {rejection.id}").click()
    page.get_by_text("Reverted: 3 images are available again.").wait_for()
    assert {str(ds.SOPInstanceUID) for ds in datasets} <= _live_uids(site)
    assert page.locator(f"#rejection-{rejection.id}").get_by_text("reverted").is_visible()


def test_the_page_is_for_staff_only(browser: Any, site: LiveSite) -> None:
    store_instance(site.app, small_ct_study(patient_id="WD-0002", accession_number="WDACC2", n_slices=1)[0],
                   transfer_syntax_uid=None, calling_ae="PEERCT1")
    with get_db(site.app).session() as session:
        study_id = session.scalar(select(ImagingStudy.id))
    page = login(browser, site, "patient")
    response = page.goto(f"/imaging-studies/{study_id}/instances")
    assert response is not None and response.status == 403
