"""Chaos on a FHIR subscription: the `hospital worker` posting a notification is killed with
SIGKILL while the receiver holds the POST open. The job sweeper in a fresh worker sends it again;
after de-duplicating by event number the receiver has every event exactly once, with no gap."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from ai_services.service import sign_report
from hospital.db import get_db
from hospital.seed import seed_demo
from integration import subscriptions
from integration.models import NotificationStatus, SubscriptionNotification
from tests.chaos.conftest import JOB_TIMEOUT_SECONDS
from tests.chaos.processes import OwnRedis, kill_hard, wait_until
from tests.conftest import make_test_app
from tests.factories import make_preliminary_report

pytestmark = pytest.mark.chaos

REPORT_TOPIC = "https://closed-loop-hospital.example/fhir/SubscriptionTopic/diagnostic-report-final"


class StallingReceiver(ThreadingHTTPServer):
    """Notes the event numbers of every POST as it arrives; holds the first notification open until
    `release` is set (the sender is killed meanwhile), answers the others 200."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StallingHandler)
        self.arrived: list[int] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _StallingHandler(BaseHTTPRequestHandler):
    server: StallingReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        numbers = [int(e["eventNumber"]) for e in bundle["entry"][0]["resource"].get("notificationEvent", [])]
        with self.server.lock:
            self.server.arrived.extend(numbers)
            first = bool(numbers) and not self.server.first_arrived.is_set()  # not the handshake
            if first:
                self.server.first_arrived.set()
        if first:
            self.server.release.wait(timeout=120)
        try:
            self.send_response(200)
            self.end_headers()
        except OSError:
            pass  # the sender died holding this POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture()
def receiver() -> Iterator[StallingReceiver]:
    server = StallingReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture()
def chaos_app(live_database: str, own_redis: OwnRedis, tmp_path: Path) -> Flask:
    return make_test_app(live_database, tmp_path, REDIS_URL=own_redis.url, DICOM_STORAGE_DIR=tmp_path / "dicom",
                         JOB_TIMEOUT_SECONDS=JOB_TIMEOUT_SECONDS)


def test_worker_killed_mid_delivery_every_event_arrives_once_after_dedup(
    chaos_app: Flask, workers: Callable[..., object], receiver: StallingReceiver
) -> None:
    with chaos_app.app_context(), get_db(chaos_app).transaction() as session:
        seed = seed_demo(session, chaos_app)
        subscriptions.create_subscription(session, seed.users["clinician"], {
            "resourceType": "Subscription", "status": "requested", "reason": "chaos", "criteria": REPORT_TOPIC,
            "channel": {"type": "rest-hook", "endpoint": receiver.url, "payload": "application/fhir+json"},
        })
        for _ in range(3):
            report = make_preliminary_report(session, seed, [])
            sign_report(session, seed.users["radiologist"], report.id, "No nodule.")
    # Committed: three ReportSigned events wait in Redis for a worker.

    doomed = workers("notify")
    assert receiver.first_arrived.wait(timeout=60), "no notification reached the receiver"
    kill_hard(doomed)  # type: ignore[arg-type]
    receiver.release.set()  # the held POST is answered to a dead sender
    stalled = receiver.arrived[0]

    workers("notify")  # its sweeper re-sends the dead worker's job once the lease has run out

    def all_sent() -> bool:
        with get_db(chaos_app).session() as session:
            statuses = list(session.scalars(select(SubscriptionNotification.status)))
        return len(statuses) == 3 and set(statuses) == {NotificationStatus.SENT}

    wait_until("every notification to be delivered after the kill", all_sent, timeout=JOB_TIMEOUT_SECONDS + 60,
               interval=0.5)
    with receiver.lock:
        arrived = list(receiver.arrived)
    assert sorted(set(arrived)) == [1, 2, 3]  # every event, no gap, after de-duplication by number
    assert arrived.count(stalled) == 2  # the one cut off was sent again, with the same number
    assert len(arrived) == 4
