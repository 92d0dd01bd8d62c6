"""A real DICOMweb client library (`dicomweb-client`, the Python sibling of the dicomweb-client
JavaScript library OHIF loads images with) against the archive served over HTTP, walking the way a
web viewer does: search studies, search series, retrieve series metadata, retrieve frames (of a
JPEG 2000 instance too, asked as uncompressed) and a bulk data URI the metadata named. The server
runs in a thread on a committed database (`live_database`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from flask import Flask
from pydicom.uid import JPEG2000Lossless
from werkzeug.serving import make_server

from hospital.db import get_db
from hospital.seed import DEMO_PASSWORD, seed_demo
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import demo_order, multipart_body, part10, small_ct_study
from tests.imaging_orders.test_dicomweb_viewer import multiframe_of

MRN = "DWC-0001"
ACCESSION = "DWCACC1"
PIXEL_DATA = "7FE00010"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture()
def live_server(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    app = make_test_app(live_database, tmp_path)
    with app.app_context(), get_db(app).transaction() as session:
        demo = seed_demo(session, app)
        demo_order(session, demo, mrn=MRN, accession_number=ACCESSION)
    with serving(app) as base:
        yield base


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """The app served over HTTP in a thread (its base URL) until the block ends."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.app = host_with_port(app, server.server_port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        get_db(app).engine.dispose()


def host_with_port(app: Any, port: int) -> Any:
    """dicomweb-client (0.61) sends `Host: 127.0.0.1` without the port of a non-default-port URL,
    so URLs the server builds from Host (RetrieveURL, BulkDataURI) would name port 80. A reverse
    proxy in front of the app forwards the real Host; this plays that part."""
    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        if ":" not in environ.get("HTTP_HOST", ":"):
            environ["HTTP_HOST"] = f"{environ['HTTP_HOST']}:{port}"
        return app(environ, start_response)

    return wsgi


def bearer(base: str, username: str) -> dict[str, str]:
    token = requests.post(f"{base}/api/auth/token", json={"username": username, "password": DEMO_PASSWORD}, timeout=10)
    assert token.status_code == 201, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def test_a_viewer_loads_a_study_through_dicomweb_client(live_server: str) -> None:
    slices = small_ct_study(patient_id=MRN, accession_number=ACCESSION)
    compressed = multiframe_of(slices, compress=JPEG2000Lossless)
    body, content_type = multipart_body([part10(ds) for ds in [*slices, compressed]])
    stored = requests.post(f"{live_server}/dicomweb/studies", data=body, timeout=30,
                           headers={**bearer(live_server, "imaging_staff"), "Content-Type": content_type})
    assert stored.status_code == 200, stored.text

    viewer = DICOMwebClient(url=f"{live_server}/dicomweb", headers=bearer(live_server, "radiologist"))
    [study] = viewer.search_for_studies(search_filters={"PatientID": MRN})
    study_uid = study["0020000D"]["Value"][0]
    assert study_uid == slices[0].StudyInstanceUID
    series = viewer.search_for_series(study_uid)
    assert [s["0020000E"]["Value"][0] for s in series] == [slices[0].SeriesInstanceUID]
    series_uid = series[0]["0020000E"]["Value"][0]

    metadata: list[dict[str, Any]] = viewer.retrieve_series_metadata(study_uid, series_uid)
    by_uid = {m["00080018"]["Value"][0]: m for m in metadata}
    assert set(by_uid) == {ds.SOPInstanceUID for ds in [*slices, compressed]}
    assert all("InlineBinary" not in m[PIXEL_DATA] for m in metadata)

    uncompressed = (("application/octet-stream", EXPLICIT_LE),)
    [frame] = viewer.retrieve_instance_frames(study_uid, series_uid, slices[1].SOPInstanceUID, [1],
                                              media_types=uncompressed)
    assert frame == bytes(slices[1].PixelData)
    frames = viewer.retrieve_instance_frames(study_uid, series_uid, compressed.SOPInstanceUID, [3, 1],
                                             media_types=uncompressed)
    assert frames == [bytes(slices[2].PixelData), bytes(slices[0].PixelData)]
    # What dicomweb-client asks without media types (multipart/related; type="*/*") is uncompressed too.
    assert viewer.retrieve_instance_frames(study_uid, series_uid, compressed.SOPInstanceUID, [2]) == [
        bytes(slices[1].PixelData)]

    bulk = viewer.retrieve_bulkdata(by_uid[slices[0].SOPInstanceUID][PIXEL_DATA]["BulkDataURI"],
                                    media_types=uncompressed)
    assert bulk == [bytes(slices[0].PixelData)]

    outsider = DICOMwebClient(url=f"{live_server}/dicomweb", headers=bearer(live_server, "pharmacist"))
    assert outsider.search_for_series(study_uid) == []
    with pytest.raises(requests.HTTPError) as refused:
        outsider.retrieve_instance_frames(study_uid, series_uid, slices[1].SOPInstanceUID, [1])
    assert refused.value.response.status_code == 403
