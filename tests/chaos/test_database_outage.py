"""Chaos on the database: PostgreSQL stopped (fast) under a small steady load of API requests and
C-STOREs, then started again. During the outage the web app must answer 503 problem+json, never a
500 or a hang, and the DICOM server a failure status, never success; afterwards both must serve
again without a restart, and every instance acknowledged with success must be indexed and on disk.

Runs on a PostgreSQL cluster of the test's own (`own_postgres`): the shared server is never stopped.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import create_engine, select
from werkzeug.serving import BaseWSGIServer, make_server

from demo.closed_loop import dicom_server_process, free_port
from hospital.app import create_app
from hospital.db import get_db
from hospital.seed import DEMO_PASSWORD, seed_demo
from imaging_orders.archive.models import ImagingInstance
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom
from tests.chaos.processes import OwnPostgres, wait_until

pytestmark = pytest.mark.chaos

AE_TITLE = "HOSPITAL"
REQUEST_TIMEOUT_SECONDS = 10  # an answer slower than this during the outage counts as a hang
LOAD_INTERVAL_SECONDS = 0.2  # ~5 requests and ~5 C-STOREs a second
OUTAGE_SECONDS = 3  # long enough for every pooled connection to be tried and found dead


@dataclass
class Outcome:
    """One request or C-STORE: when it ran and what came back."""

    started: float
    ended: float
    status: int | None  # HTTP status or DICOM status; None: no answer (timeout, refused, aborted)
    detail: str = ""
    content_type: str = ""
    sop_instance_uid: str = ""


@dataclass
class Load:
    """Two bounded loops, one over HTTP and one over DICOM, recording every outcome."""

    base_url: str
    dicom_port: int
    token: str
    files: list[Path]
    stop: threading.Event = field(default_factory=threading.Event)
    http: list[Outcome] = field(default_factory=list)
    stores: list[Outcome] = field(default_factory=list)

    def run_http(self) -> None:
        while not self.stop.wait(LOAD_INTERVAL_SECONDS):
            self.http.append(self.get("/api/worklist"))

    def get(self, path: str) -> Outcome:
        request = urllib.request.Request(self.base_url + path, headers={"Authorization": f"Bearer {self.token}"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                status, body, content_type = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, body, content_type = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        except OSError as exc:  # timeout or connection refused: the server hung or died
            return Outcome(started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
        return Outcome(started, time.monotonic(), status, body.decode(errors="replace")[:300], content_type)

    def run_dicom(self) -> None:
        """One association per instance, as a modality retrying single images would: an outage
        must not leave a sender stuck on a half-dead association."""
        ae = AE(ae_title="CHAOSCT")
        ae.add_requested_context(CTImageStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = REQUEST_TIMEOUT_SECONDS
        for path in self.files:
            if self.stop.wait(LOAD_INTERVAL_SECONDS):
                return
            dataset = dcmread(path)
            started = time.monotonic()
            assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title=AE_TITLE)
            if not assoc.is_established:
                self.stores.append(Outcome(started, time.monotonic(), None, "no association",
                                           sop_instance_uid=dataset.SOPInstanceUID))
                continue
            try:
                status = assoc.send_c_store(dataset)
            finally:
                assoc.release()
            code = int(status.Status) if status and "Status" in status else None
            comment = str(status.get("ErrorComment", "")) if status else "no response"
            self.stores.append(Outcome(started, time.monotonic(), code, comment, sop_instance_uid=dataset.SOPInstanceUID))


def between(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in list(outcomes) if o.started >= start and o.ended <= end]


@pytest.fixture()
def outage_app(own_postgres: OwnPostgres, tmp_path: Path) -> Iterator[Flask]:
    # Production settings, not TESTING: the error handlers must hold on their own.
    app = create_app({"DATABASE_URL": own_postgres.url, "REDIS_URL": None, "SECRET_KEY": "test-secret",
                      "INSTANCE_DIR": tmp_path, "DICOM_STORAGE_DIR": tmp_path / "dicom",
                      "LOGIN_ATTEMPTS_PER_MINUTE": 100_000})
    yield app
    get_db(app).engine.dispose()


@pytest.fixture()
def web_server(outage_app: Flask) -> Iterator[str]:
    server: BaseWSGIServer = make_server("127.0.0.1", free_port(), outage_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="outage-web", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def sign_in(base_url: str, username: str) -> str:
    request = urllib.request.Request(
        base_url + "/api/auth/token", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"username": username, "password": DEMO_PASSWORD}).encode(),
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return str(json.loads(response.read())["access_token"])


def test_postgres_stopped_and_started_under_load_gives_503_and_failure_status_then_recovers_losing_nothing(
    own_postgres: OwnPostgres, outage_app: Flask, web_server: str, tmp_path: Path
) -> None:
    with outage_app.app_context(), get_db(outage_app).transaction() as session:
        seed = seed_demo(session, outage_app)
        mrn, name = seed.patient.mrn, seed.patient.dicom_name
    # Unmatched images are still kept (and flagged for staff); that is all this test needs.
    files = write_ct_series(make_ct_phantom(30_003, n_slices=100, size=64, n_lesions=1), tmp_path / "study",
                            patient_id=mrn, patient_name=name, accession_number="CHAOS-PG-1")
    storage = tmp_path / "dicom"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # inline jobs: never the shared Redis
    env.update(DATABASE_URL=own_postgres.url, DICOM_STORAGE_DIR=str(storage), HOSPITAL_INSTANCE_DIR=str(tmp_path),
               SECRET_KEY="test-secret", STUDY_QUIET_SECONDS="3600")  # no completion, so no AI run mid-test
    dicom_port = free_port()

    with dicom_server_process(env, dicom_port, AE_TITLE):
        load = Load(web_server, dicom_port, sign_in(web_server, "imaging_staff"), files)
        threads = [threading.Thread(target=loop, daemon=True) for loop in (load.run_http, load.run_dicom)]
        for thread in threads:
            thread.start()
        try:
            wait_until("a stored instance before the outage",
                       lambda: any(o.status == 0x0000 for o in load.stores), timeout=15)
            own_postgres.stop("fast")
            outage_started = time.monotonic()
            wait_until("3 s of outage with 3 requests and 3 C-STOREs in it",
                       lambda: time.monotonic() - outage_started >= OUTAGE_SECONDS
                       and len(between(load.http, outage_started, time.monotonic())) >= 3
                       and len(between(load.stores, outage_started, time.monotonic())) >= 3, timeout=20)
            outage_ended = time.monotonic()
            own_postgres.start()
            restarted = time.monotonic()
            wait_until("a request answered 200 after the restart",
                       lambda: any(o.status == 200 for o in between(load.http, restarted, time.monotonic())), timeout=15)
            wait_until("a C-STORE stored after the restart",
                       lambda: any(o.status == 0x0000 for o in between(load.stores, restarted, time.monotonic())),
                       timeout=15)
            time.sleep(1)  # a little steady state after recovery
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(REQUEST_TIMEOUT_SECONDS * 2)

    http_outage = between(load.http, outage_started, outage_ended)
    stores_outage = between(load.stores, outage_started, outage_ended)
    recovered_http = min(o.ended for o in load.http if o.started >= restarted and o.status == 200) - restarted
    recovered_dicom = min(o.ended for o in load.stores if o.started >= restarted and o.status == 0x0000) - restarted
    print(f"\noutage {outage_ended - outage_started:.1f} s; HTTP {len(load.http)} requests "
          f"{dict(Counter(o.status for o in load.http))}, {len(http_outage)} during the outage; C-STORE {len(load.stores)} "
          f"{ {k if k is None else hex(k): n for k, n in Counter(o.status for o in load.stores).items()} }, "
          f"{len(stores_outage)} during the outage; first 200 {recovered_http:.1f} s and first stored "
          f"{recovered_dicom:.1f} s after the restart", file=sys.stderr)

    # During: 503 problem+json quickly, never 500, never a hang; C-STORE a failure, never success.
    assert http_outage and all(o.status == 503 and o.content_type.startswith("application/problem+json")
                               for o in http_outage), http_outage
    assert all(json.loads(o.detail)["status"] == 503 for o in http_outage)
    assert stores_outage and all(o.status is not None and o.status != 0x0000 for o in stores_outage), stores_outage
    # Around the edges a request may succeed or fail, but only ever in the allowed ways.
    assert all(o.status in (200, 503) for o in load.http), [o for o in load.http if o.status not in (200, 503)]
    assert max(o.ended - o.started for o in load.http) < REQUEST_TIMEOUT_SECONDS
    assert all(o.status is not None for o in load.stores), [o for o in load.stores if o.status is None]

    # After: both servers recovered without a restart, and once they had, they stayed recovered.
    assert all(o.status == 200 for o in load.http if o.started > restarted + recovered_http), load.http
    assert all(o.status == 0x0000 for o in load.stores if o.started > restarted + recovered_dicom), load.stores

    # Nothing acknowledged is missing: every success is indexed and its file is on disk, intact.
    acknowledged = {o.sop_instance_uid for o in load.stores if o.status == 0x0000}
    engine = create_engine(own_postgres.url)
    with engine.connect() as conn:
        rows = {row.sop_instance_uid: row for row in conn.execute(
            select(ImagingInstance.sop_instance_uid, ImagingInstance.path, ImagingInstance.size_bytes))}
    engine.dispose()
    assert acknowledged - rows.keys() == set(), "acknowledged as stored but not indexed"
    for uid in acknowledged:
        stored = storage / rows[uid].path
        assert stored.is_file() and stored.stat().st_size == rows[uid].size_bytes, uid
