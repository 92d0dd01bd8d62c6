"""FHIR Subscriptions (R5 backport on R4B, rest-hook) end to end: a referrer and a centre's staff
subscribe through the FHIR API with their bearer tokens, a real HTTP receiver started here gets the
notification Bundles; failures are retried and never lose an event."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.reading import add_addendum
from ai_services.service import sign_report
from hospital.clock import utcnow
from hospital.jobs import enqueue
from hospital.models import ApiToken, AuditEvent, Practitioner, Role, User
from hospital.seed import DemoSeed
from hospital.smart import register_client
from imaging_orders.service import accept_referral, book_appointment, cancel_appointment, free_slots
from integration import subscriptions
from integration.models import FhirSubscription, NotificationStatus, SubscriptionNotification, SubscriptionStatus
from referrals.service import ReferralRequest, create_referral
from tests.conftest import ApiClient
from tests.factories import make_preliminary_report, make_referral
from tests.imaging_orders.test_cancelled_orders import booked

REPORT_TOPIC = "https://closed-loop-hospital.example/fhir/SubscriptionTopic/diagnostic-report-final"
APPOINTMENT_TOPIC = "https://closed-loop-hospital.example/fhir/SubscriptionTopic/appointment-booked"


class Receiver(ThreadingHTTPServer):
    """A hospital's endpoint: keeps every Bundle POSTed to it; answers `answer` (200 by default)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.answer = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def events(self, kind: str = "event-notification") -> list[tuple[int, dict[str, Any]]]:
        """(event number, bundle) of each notification received."""
        found = []
        for bundle, _ in self.received:
            status = bundle["entry"][0]["resource"]
            if status["type"] == kind:
                found.extend((int(e["eventNumber"]), bundle) for e in status.get("notificationEvent", []))
        return found


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.answer == 200:
            self.server.received.append((json.loads(body), dict(self.headers.items())))
        self.send_response(self.server.answer)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def subscription_body(topic: str, endpoint: str, content: str = "id-only", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Subscription", "status": "requested", "reason": "results for our EHR", "criteria": topic,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": subscriptions.EXT_CONTENT, "valueCode": content}]},
                    "header": ["Authorization: Bearer receiver-secret"]},
    }
    body.update(extra)
    return body


def subscribe(api: ApiClient, body: dict[str, Any], receiver: Receiver | None = None) -> str:
    """Create it; with the receiver it names, check the handshake made it active."""
    response = api.post("/fhir/Subscription", json=body)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["status"] == "requested"
    subscription_id = str(response.get_json()["id"])
    if receiver is not None:
        # The handshake ran after the commit (inline here): the endpoint answered, so it is active.
        assert api.get(f"/fhir/Subscription/{subscription_id}").get_json()["status"] == "active"
        assert [b["entry"][0]["resource"]["type"] for b, _ in receiver.received][-1:] == ["handshake"]
    return subscription_id


def signed_report(db_session: Session, demo: DemoSeed) -> int:
    """A report of the demo patient, referred by the demo clinician, signed by the radiologist
    (committed: the event's jobs run after the commit)."""
    report = make_preliminary_report(db_session, demo, [])
    sign_report(db_session, demo.users["radiologist"], report.id, "No nodule.")
    db_session.commit()
    return report.id


def test_a_referrer_gets_a_signed_and_an_amended_report_once_each_numbered(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    subscription_id = subscribe(as_role("clinician"), subscription_body(REPORT_TOPIC, receiver.url, "full-resource"), receiver)

    report_id = signed_report(db_session, demo)
    assert [n for n, _ in receiver.events()] == [1]
    bundle, headers = receiver.received[-1]
    assert headers["Authorization"] == "Bearer receiver-secret"
    assert bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "SubscriptionStatus"
    assert status["eventsSinceSubscriptionStart"] == "1"
    assert status["subscription"]["reference"].endswith(f"/fhir/Subscription/{subscription_id}")
    assert status["topic"] == REPORT_TOPIC
    assert status["notificationEvent"][0]["focus"]["reference"].endswith(f"/DiagnosticReport/{report_id}")
    focus = bundle["entry"][1]["resource"]
    assert (focus["resourceType"], focus["id"], focus["status"]) == ("DiagnosticReport", str(report_id), "final")
    # Sending the full resource is the owner's read of it, audited as theirs.
    clinician_id = demo.users["clinician"].id
    assert db_session.scalar(select(AuditEvent.id).where(
        AuditEvent.user_id == clinician_id, AuditEvent.entity_type == "DiagnosticReport",
        AuditEvent.entity_id == str(report_id), AuditEvent.action == "R")) is not None

    add_addendum(db_session, demo.users["radiologist"], report_id, "Compared with 2025: stable.")
    db_session.commit()
    assert [n for n, _ in receiver.events()] == [1, 2]
    amended = receiver.events()[1][1]
    assert amended["entry"][0]["resource"]["eventsSinceSubscriptionStart"] == "2"
    assert amended["entry"][1]["resource"]["status"] == "amended"


def test_another_clinicians_subscription_hears_nothing_of_this_report(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, client: Any, receiver: Receiver
) -> None:
    practitioner = Practitioner(given_name="Other", family_name="Doctor", organization_id=demo.clinic.id)
    db_session.add(practitioner)
    db_session.flush()
    db_session.add(User(username="other_clinician", password_hash=demo.users["clinician"].password_hash,
                        role=Role.CLINICIAN, practitioner_id=practitioner.id, organization_id=demo.clinic.id))
    db_session.commit()
    subscribe(as_role("other_clinician"), subscription_body(REPORT_TOPIC, receiver.url), receiver)

    signed_report(db_session, demo)

    assert receiver.events() == []
    assert db_session.scalar(select(SubscriptionNotification.id)) is None


def test_a_centres_staff_get_the_appointments_booked_there(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    subscription_id = subscribe(as_role("imaging_staff"), subscription_body(APPOINTMENT_TOPIC, receiver.url), receiver)
    referral = create_referral(db_session, demo.users["clinician"], ReferralRequest(
        patient_id=demo.patient.id, performer_organization_id=demo.imaging_centre.id, modality="CT",
        body_part="CHEST", procedure_description="CT chest", reason="cough", access_reason="new patient"))
    accept_referral(db_session, demo.users["imaging_staff"], referral.id)
    slot = free_slots(db_session, demo.imaging_centre.id, "CT", utcnow(), utcnow() + timedelta(days=14))[0]
    assert slot.start >= utcnow()
    appointment = book_appointment(db_session, demo.users["patient"], referral.id, slot.id)
    db_session.commit()

    assert [n for n, _ in receiver.events()] == [1]
    bundle = receiver.events()[0][1]
    assert bundle["entry"][0]["resource"]["subscription"]["reference"].endswith(f"/Subscription/{subscription_id}")
    assert bundle["entry"][1]["fullUrl"].endswith(f"/Appointment/{appointment.id}")
    assert "resource" not in bundle["entry"][1]  # id-only

    cancel_appointment(db_session, demo.users["patient"], appointment.id)
    db_session.commit()
    assert [n for n, _ in receiver.events()] == [1, 2]
    assert receiver.events()[1][1]["entry"][1]["fullUrl"].endswith(f"/Appointment/{appointment.id}")


def test_staff_of_another_organisation_hear_nothing_of_this_booking(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    other_centre_staff = User(username="other_centre_staff", password_hash=demo.users["clinician"].password_hash,
                              role=Role.IMAGING_STAFF, organization_id=demo.clinic.id)
    db_session.add(other_centre_staff)
    db_session.commit()
    subscribe(as_role("other_centre_staff"), subscription_body(APPOINTMENT_TOPIC, receiver.url), receiver)
    referral = create_referral(db_session, demo.users["clinician"], ReferralRequest(
        patient_id=demo.patient.id, performer_organization_id=demo.imaging_centre.id, modality="CT",
        body_part="CHEST", procedure_description="CT chest", reason="cough", access_reason="new patient"))
    accept_referral(db_session, demo.users["imaging_staff"], referral.id)
    slot = free_slots(db_session, demo.imaging_centre.id, "CT", utcnow(), utcnow() + timedelta(days=14))[0]
    book_appointment(db_session, demo.users["patient"], referral.id, slot.id)
    db_session.commit()
    assert receiver.events() == []


def test_a_receiver_that_is_down_gets_the_event_later_and_the_subscription_shows_error(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    api = as_role("clinician")
    subscription_id = subscribe(api, subscription_body(REPORT_TOPIC, receiver.url), receiver)
    receiver.answer = 503

    signed_report(db_session, demo)
    assert receiver.events() == []
    notification = db_session.scalars(select(SubscriptionNotification)).one()
    assert (notification.status, notification.attempts, notification.event_number) == (NotificationStatus.PENDING, 1, 1)
    assert "503" in (notification.last_error or "")
    # Not yet due: the sweep leaves it.
    assert subscriptions.deliver_due_notifications(db_session, app) == []

    # Failing again past the threshold: the owner sees status error, and the event is still owed.
    for _ in range(app.config["SUBSCRIPTION_ERROR_AFTER_FAILURES"] - 1):
        assert subscriptions.deliver_notification(db_session, app, notification.id) is False
    db_session.commit()
    shown = api.get(f"/fhir/Subscription/{subscription_id}").get_json()
    assert shown["status"] == "error" and "503" in shown["error"]
    status = api.get(f"/fhir/Subscription/{subscription_id}/$status").get_json()["entry"][0]["resource"]
    assert status["status"] == "error" and status["eventsSinceSubscriptionStart"] == "1"

    # Backoff: doubling from SUBSCRIPTION_RETRY_SECONDS, capped.
    assert [subscriptions.retry_delay(app, n).total_seconds() for n in (1, 2, 3, 99)] == [30, 60, 120, 3600]

    receiver.answer = 200
    notification.next_attempt_at = utcnow() - timedelta(seconds=1)  # its retry time has come
    enqueue(db_session, "integration.jobs.check_subscriptions", queue="notify")  # what `hospital scheduler` does
    db_session.commit()  # the sweep runs after the commit (inline here), and the delivery after it
    assert [n for n, _ in receiver.events()] == [1]
    assert api.get(f"/fhir/Subscription/{subscription_id}").get_json()["status"] == "active"


def test_a_failed_handshake_shows_error_until_a_delivery_gets_through(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    api = as_role("clinician")
    receiver.answer = 503
    subscription_id = subscribe(api, subscription_body(REPORT_TOPIC, receiver.url))
    shown = api.get(f"/fhir/Subscription/{subscription_id}").get_json()
    assert shown["status"] == "error" and shown["error"].startswith("handshake: HTTP 503")

    receiver.answer = 200
    signed_report(db_session, demo)  # still numbered for it, and delivered: the endpoint is back
    assert [n for n, _ in receiver.events()] == [1]
    assert api.get(f"/fhir/Subscription/{subscription_id}").get_json()["status"] == "active"


def test_heartbeat_when_nothing_was_sent_for_the_period(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    body = subscription_body(REPORT_TOPIC, receiver.url)
    body["channel"]["extension"] = [{"url": subscriptions.EXT_HEARTBEAT, "valueUnsignedInt": 60}]
    subscription_id = int(subscribe(as_role("clinician"), body, receiver))

    assert subscriptions.send_heartbeats(db_session, app) == []  # not yet a period
    assert subscriptions.send_heartbeats(db_session, app, now=utcnow() + timedelta(seconds=61)) == [subscription_id]
    beats = [b for b, _ in receiver.received if b["entry"][0]["resource"]["type"] == "heartbeat"]
    assert len(beats) == 1
    assert beats[0]["entry"][0]["resource"]["eventsSinceSubscriptionStart"] == "0"
    assert subscriptions.send_heartbeats(db_session, app, now=utcnow() + timedelta(seconds=61)) == []


def test_subscriptions_are_their_owners_alone(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    owner = as_role("clinician")
    subscription_id = subscribe(owner, subscription_body(REPORT_TOPIC, receiver.url), receiver)
    read = owner.get(f"/fhir/Subscription/{subscription_id}").get_json()
    assert read["channel"]["header"] == ["Authorization: ***"]  # the receiver's secret is not echoed
    assert [e["resource"]["id"] for e in owner.get("/fhir/Subscription").get_json()["entry"]] == [subscription_id]

    other = as_role("radiologist")
    assert other.get(f"/fhir/Subscription/{subscription_id}").status_code == 404
    assert other.get("/fhir/Subscription").get_json()["total"] == 0
    assert other.delete(f"/fhir/Subscription/{subscription_id}").status_code == 404

    assert owner.delete(f"/fhir/Subscription/{subscription_id}").status_code == 204
    assert owner.get(f"/fhir/Subscription/{subscription_id}").get_json()["status"] == "off"
    signed_report(db_session, demo)
    assert receiver.events() == []
    row = db_session.get(FhirSubscription, int(subscription_id))
    assert row is not None and row.status is SubscriptionStatus.OFF and row.events_since_start == 0


def test_a_subscription_past_its_end_numbers_nothing(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    ended = (utcnow() - timedelta(minutes=1)).isoformat()
    subscription_id = subscribe(as_role("clinician"), subscription_body(REPORT_TOPIC, receiver.url, end=ended), receiver)
    signed_report(db_session, demo)
    assert receiver.events() == []
    row = db_session.get(FhirSubscription, int(subscription_id))
    assert row is not None and row.events_since_start == 0


def test_topics_are_discoverable(app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, client: Any) -> None:
    api = as_role("clinician")
    topics = api.get("/fhir/SubscriptionTopic").get_json()
    assert {e["resource"]["url"] for e in topics["entry"]} == {REPORT_TOPIC, APPOINTMENT_TOPIC}
    assert api.get("/fhir/SubscriptionTopic/appointment-booked").get_json()["url"] == APPOINTMENT_TOPIC
    statement = client.get("/fhir/metadata").get_json()
    rest = statement["rest"][0]
    assert {e["valueCanonical"] for e in rest["extension"]} == {REPORT_TOPIC, APPOINTMENT_TOPIC}
    subscription = next(r for r in rest["resource"] if r["type"] == "Subscription")
    assert {i["code"] for i in subscription["interaction"]} == {"create", "read", "search-type", "delete"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda b: b.update(criteria="https://example.org/SubscriptionTopic/x"), "unknown topic"),
    (lambda b: b["channel"].update(type="websocket"), "rest-hook"),
    (lambda b: b["channel"].update(endpoint="http://receiver.example.org/hook"), "https"),
    (lambda b: b["channel"].update(endpoint="http://localhost.evil.example/hook"), "https"),
    (lambda b: b.update(_criteria={"extension": [{"url": subscriptions.EXT_FILTER,
                                                  "valueString": "DiagnosticReport?code=CT"}]}), "cannot be filtered"),
    (lambda b: b["channel"]["_payload"]["extension"][0].update(valueCode="everything"), "payload content"),
    (lambda b: b.update(criteria=APPOINTMENT_TOPIC), "cannot subscribe"),
    (lambda b: b.update(resourceType="Patient"), "expected a Subscription"),
])
def test_a_bad_subscription_is_refused_with_an_operation_outcome(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, change: Any, message: str
) -> None:
    body = subscription_body(REPORT_TOPIC, "https://receiver.example.org/hook")
    change(body)
    response = as_role("clinician").post("/fhir/Subscription", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert message in outcome["issue"][0]["diagnostics"]
    assert db_session.scalar(select(FhirSubscription.id)) is None


def test_an_anonymous_caller_cannot_subscribe(app: Flask, db_session: Session, client: Any) -> None:
    response = client.post("/fhir/Subscription", json=subscription_body(REPORT_TOPIC, "https://x.example/hook"))
    assert response.status_code in (401, 403)  # no token: refused before the body is read (CSRF or sign-in)
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert db_session.scalar(select(FhirSubscription.id)) is None
    listing = client.get("/fhir/Subscription")
    assert listing.status_code == 401 and listing.get_json()["resourceType"] == "OperationOutcome"


def smart_api(client: Any, db_session: Session, user: User, scope: str, patient_id: int | None) -> ApiClient:
    """A SMART app's bearer token for `user` with `scope` (launched for `patient_id`)."""
    app_client = register_client(db_session, name="EHR feed", scopes=scope, redirect_uris=["https://ehr.example/cb"])
    plain = secrets.token_urlsafe(32)
    db_session.add(ApiToken(user_id=user.id, token_sha256=hashlib.sha256(plain.encode()).hexdigest(),
                            smart_client_id=app_client.id, scope=scope, patient_id=patient_id,
                            expires_at=utcnow() + timedelta(hours=1)))
    db_session.commit()
    return ApiClient(client, plain)


def test_a_smart_app_subscribes_within_its_scopes_and_launch_patient(
    app: Flask, db_session: Session, demo: DemoSeed, client: Any, receiver: Receiver
) -> None:
    clinician = demo.users["clinician"]
    make_referral(db_session, demo)  # the demo patient is in the clinician's care
    patient_app = smart_api(client, db_session, clinician, "patient/DiagnosticReport.rs patient/Subscription.c",
                            demo.patient.id)
    body = subscription_body(REPORT_TOPIC, receiver.url)
    unfiltered = patient_app.post("/fhir/Subscription", json=body)
    assert unfiltered.status_code == 400 and "patient-scoped app" in unfiltered.get_json()["issue"][0]["diagnostics"]
    body["_criteria"] = {"extension": [{"url": subscriptions.EXT_FILTER,
                                        "valueString": f"DiagnosticReport?patient=Patient/{demo.patient.id}"}]}
    created = patient_app.post("/fhir/Subscription", json=body)
    assert created.status_code == 201, created.get_data(as_text=True)

    reader_only = smart_api(client, db_session, clinician, "user/DiagnosticReport.rs", None)
    refused = reader_only.post("/fhir/Subscription", json=subscription_body(REPORT_TOPIC, receiver.url))
    assert refused.status_code == 403 and refused.get_json()["resourceType"] == "OperationOutcome"


def test_a_booking_through_the_api_and_its_withdrawal_reach_the_centre_staff(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, receiver: Receiver
) -> None:
    subscribe(as_role("imaging_staff"), subscription_body(APPOINTMENT_TOPIC, receiver.url, "full-resource"), receiver)
    referral, appointment = booked(as_role, demo)
    assert [n for n, _ in receiver.events()] == [1]
    booked_resource = receiver.events()[0][1]["entry"][1]["resource"]
    assert (booked_resource["id"], booked_resource["status"]) == (str(appointment["id"]), "booked")

    withdrawn = as_role("clinician").post(f"/api/referrals/{referral['id']}/cancel", json={"reason": "resolved"})
    assert withdrawn.status_code == 200
    assert [n for n, _ in receiver.events()] == [1, 2]
    assert receiver.events()[1][1]["entry"][1]["resource"]["status"] == "cancelled"
