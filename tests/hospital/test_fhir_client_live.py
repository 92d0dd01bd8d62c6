"""A real FHIR client library (`fhirclient`, SMART on FHIR's Python client, R4) against the app
served over HTTP: it reads the CapabilityStatement, creates, pages through a search, and updates
with If-Match. The server runs in a thread on a committed database (`live_database`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fhirclient import client
from fhirclient.models.patient import Patient
from werkzeug.serving import make_server

from hospital.db import get_db
from hospital.seed import DEMO_PASSWORD, seed_demo
from tests.conftest import make_test_app


@pytest.fixture()
def live_server(live_database: str, tmp_path: Path) -> Iterator[str]:
    app = make_test_app(live_database, tmp_path)
    with app.app_context(), get_db(app).transaction() as session:
        seed_demo(session, app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        get_db(app).engine.dispose()


def fhir_client(base: str, username: str) -> client.FHIRClient:
    token = requests.post(f"{base}/api/auth/token", json={"username": username, "password": DEMO_PASSWORD}, timeout=10)
    assert token.status_code == 201, token.text
    smart = client.FHIRClient(settings={"app_id": "closed-loop-hospital-tests", "api_base": f"{base}/fhir/"})
    # fhirclient signs requests only through SMART OAuth; a bearer token from our own endpoint
    # goes on its requests session, so the library still sends every request.
    smart.server.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return smart


def test_fhirclient_creates_pages_and_updates_with_if_match(live_server: str) -> None:
    smart = fhir_client(live_server, "admin")
    server = smart.server
    capability = server.capabilityStatement
    assert capability.fhirVersion == "4.0.1"
    assert "create" in {i.code for r in capability.rest[0].resource if r.type == "Patient" for i in r.interaction}

    created_ids = []
    for n in range(7):
        patient = Patient({
            "resourceType": "Patient",
            "name": [{"use": "official", "family": "Livetest", "given": [f"Number{n}"]}],
            "gender": "other",
            "birthDate": f"199{n}-01-01",
        })
        response = patient.create(server)
        created_ids.append(response["id"])
        assert response["meta"]["versionId"] == "1"

    search = Patient.where(struct={"family": "Livetest", "_count": "3", "_sort": "_id"})
    pages = list(search.perform_iter(server))
    found = [entry.resource.id for bundle in pages for entry in bundle.entry or []]
    assert len(pages) == 3
    assert found == created_ids

    patient = Patient.read(created_ids[0], server)
    assert patient.meta.versionId == "1"
    patient.telecom = None
    patient.name[0].given = ["Renamed"]
    server.session.headers["If-Match"] = 'W/"1"'
    try:
        updated = patient.update(server)
        assert updated["meta"]["versionId"] == "2"
        with pytest.raises(requests.HTTPError) as stale:
            patient.update(server)  # still If-Match 1: someone (we) changed it since
        assert stale.value.response.status_code == 412
    finally:
        del server.session.headers["If-Match"]
    assert Patient.read(created_ids[0], server).name[0].given == ["Renamed"]
