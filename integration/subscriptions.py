"""FHIR Subscriptions: the R5 Subscriptions Backport IG on R4B, rest-hook channel.

Which: topic-based (http://hl7.org/fhir/uv/subscriptions-backport). `Subscription.criteria` holds
the canonical URL of one of our SubscriptionTopics (`TOPICS`, also served as R4B SubscriptionTopic
resources and named in the CapabilityStatement); a notification is a `history` Bundle whose first
entry is an R4B SubscriptionStatus carrying `eventsSinceSubscriptionStart` and each
`notificationEvent.eventNumber`.

The promise: every event a subscription matched is numbered and kept until its endpoint took it.
An event (a domain event, handled as a durable job) records in one transaction one
`SubscriptionNotification` per matching subscription, numbered from the subscription's counter
under its row lock (gap-free, never reused), and schedules its delivery on the job bus. Delivery
is at least once: a POST that fails, or a worker killed mid-POST, is sent again (the retry sweep,
the job sweeper), so a receiver de-duplicates by `eventNumber`.

Who sees what: the owner is the user who created the subscription (a SMART app's user). A
notification is recorded only for an event the owner may see under the access policy when it
happens (a referrer's own patients' reports; a centre's staff their centre's appointments), and a
`full-resource` payload read is audited as the owner's access.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from flask import Flask
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from hospital.access import can_access_patient
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Forbidden, InvalidInput, NotFound
from hospital.fhir.registry import CANONICAL_BASE, fhir_instant, fhir_registry, reference_id, validate_resource
from hospital.jobs import enqueue
from hospital.models import Role, User
from hospital.policy import may_see_type
from hospital.smart import https_or_this_machine
from hospital.smart_scopes import current_smart_access
from integration.models import (
    FhirSubscription,
    NotificationStatus,
    SubscriptionNotification,
    SubscriptionStatus,
)

logger = logging.getLogger(__name__)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
EXT_FILTER = f"{BACKPORT}/backport-filter-criteria"
EXT_CONTENT = f"{BACKPORT}/backport-payload-content"
EXT_HEARTBEAT = f"{BACKPORT}/backport-heartbeat-period"
EXT_TOPIC_CANONICAL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
PAYLOAD_CONTENTS = ("empty", "id-only", "full-resource")
MAX_HEADERS = 10
SOURCE = "fhir-subscriptions"
DELIVER_HANDLER = "integration.jobs.deliver_subscription_notification"
HANDSHAKE_HANDLER = "integration.jobs.handshake_subscription"


@dataclass(frozen=True)
class Topic:
    """A SubscriptionTopic we offer: what triggers it, who may subscribe, what it may be filtered by."""

    key: str
    title: str
    resource_type: str
    triggers: tuple[str, ...]  # the occasions (event kinds) it fires on
    description: str
    roles: frozenset[Role]

    @property
    def url(self) -> str:
        return f"{CANONICAL_BASE}/SubscriptionTopic/{self.key}"


TOPICS: dict[str, Topic] = {topic.url: topic for topic in (
    Topic("diagnostic-report-final", "Diagnostic report signed or amended", "DiagnosticReport",
          ("report-signed", "report-amended"),
          "A radiologist signed a report (status final), or added an addendum to a signed one (amended). "
          "Only reports of patients the subscriber may see: a referring clinician gets their own patients'.",
          frozenset({Role.CLINICIAN, Role.ADMIN})),
    Topic("appointment-booked", "Appointment booked or cancelled at an imaging centre", "Appointment",
          ("appointment-booked", "appointment-cancelled"),
          "An examination was booked at, or a booking cancelled from, the subscriber's imaging centre.",
          frozenset({Role.IMAGING_STAFF, Role.ADMIN})),
)}
FILTER_PARAMETERS = ("patient",)


# --- topics as FHIR -------------------------------------------------------------------------------


def topic_to_fhir(topic: Topic) -> dict[str, Any]:
    """The topic as an R4B SubscriptionTopic (what a client reads before subscribing)."""
    return validate_resource({
        "resourceType": "SubscriptionTopic",
        "id": topic.key,
        "url": topic.url,
        "title": topic.title,
        "status": "active",
        "description": topic.description,
        "resourceTrigger": [{
            "description": f"{topic.resource_type}: {', '.join(topic.triggers)}",
            "resource": f"http://hl7.org/fhir/StructureDefinition/{topic.resource_type}",
            "supportedInteraction": ["create", "update"],
        }],
        "canFilterBy": [{"resource": topic.resource_type, "filterParameter": name,
                         "description": "Only events about this patient (Patient/<id>)"}
                        for name in FILTER_PARAMETERS],
        "notificationShape": [{"resource": topic.resource_type}],
    })


def capability_extensions() -> list[dict[str, Any]]:
    """The backport IG's way of naming the topics in the CapabilityStatement."""
    return [{"url": EXT_TOPIC_CANONICAL, "valueCanonical": url} for url in TOPICS]


# --- creating, reading, stopping ------------------------------------------------------------------


def _extension(element: dict[str, Any] | None, url: str) -> dict[str, Any] | None:
    for ext in (element or {}).get("extension") or []:
        if ext.get("url") == url:
            return dict(ext)
    return None


def _parse_filter(topic: Topic, criteria: str) -> int:
    """'DiagnosticReport?patient=Patient/12' -> 12; any other filter is refused."""
    resource, _, query = criteria.partition("?")
    if resource != topic.resource_type or not query:
        raise InvalidInput(f"filter criteria {criteria!r} must read '{topic.resource_type}?patient=Patient/<id>'")
    name, _, value = query.partition("=")
    if name not in FILTER_PARAMETERS or "&" in value:
        raise InvalidInput(f"topic {topic.url} cannot be filtered by {query!r}; allowed: {', '.join(FILTER_PARAMETERS)}")
    try:
        return reference_id(value, "Patient")
    except ValueError as exc:
        raise InvalidInput(f"filter criteria {criteria!r}: {exc}") from exc


def create_subscription(session: Session, owner: User, resource: dict[str, Any]) -> FhirSubscription:
    """Check a Subscription a client sent (already validated as R4B) and store it, active."""
    topic = TOPICS.get(str(resource.get("criteria", "")))
    if topic is None:
        raise InvalidInput(f"unknown topic {resource.get('criteria')!r}; see GET /fhir/SubscriptionTopic")
    if owner.role not in topic.roles:
        raise InvalidInput(f"the {owner.role.value} role cannot subscribe to {topic.url}")
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise InvalidInput(f"channel.type {channel.get('type')!r} is not supported; use rest-hook")
    endpoint = str(channel.get("endpoint") or "")
    if len(endpoint) > 500 or not https_or_this_machine(endpoint):
        raise InvalidInput(f"channel.endpoint {endpoint!r} must be an https URL (plain http only to this machine)")
    payload_type = channel.get("payload", "application/fhir+json")
    if payload_type not in ("application/fhir+json", "application/json"):
        raise InvalidInput(f"channel.payload {payload_type!r} is not supported; use application/fhir+json")
    content_ext = _extension(channel.get("_payload"), EXT_CONTENT)
    content = str(content_ext.get("valueCode")) if content_ext else "id-only"
    if content not in PAYLOAD_CONTENTS:
        raise InvalidInput(f"payload content {content!r} is not one of {', '.join(PAYLOAD_CONTENTS)}")
    headers = [str(h) for h in channel.get("header") or []]
    if len(headers) > MAX_HEADERS or any(":" not in h or "\n" in h or "\r" in h or len(h) > 1000 for h in headers):
        raise InvalidInput("channel.header must be at most 10 lines of the form 'Name: value'")
    heartbeat_ext = _extension(channel, EXT_HEARTBEAT)
    heartbeat = heartbeat_ext.get("valueUnsignedInt") if heartbeat_ext else None
    if heartbeat is not None and not (isinstance(heartbeat, int) and heartbeat >= 10):
        raise InvalidInput("the heartbeat period must be a whole number of seconds, at least 10")
    patient_id = None
    filters = [ext for ext in (resource.get("_criteria") or {}).get("extension") or [] if ext.get("url") == EXT_FILTER]
    if len(filters) > 1:
        raise InvalidInput("at most one filter criteria is supported")
    if filters:
        patient_id = _parse_filter(topic, str(filters[0].get("valueString", "")))
        if not can_access_patient(session, owner, patient_id):
            raise InvalidInput(f"Patient/{patient_id} is not in your care")
    _check_smart_scopes(owner, topic, patient_id)
    end = _parse_end(resource.get("end"))
    subscription = FhirSubscription(
        owner_user_id=owner.id, topic=topic.url, status=SubscriptionStatus.REQUESTED,
        reason=str(resource.get("reason", ""))[:500], filter_patient_id=patient_id, endpoint=endpoint,
        headers=headers, content=content, heartbeat_seconds=heartbeat, end=end,
    )
    session.add(subscription)
    session.flush()
    enqueue(session, HANDSHAKE_HANDLER, queue="notify", subscription_id=subscription.id)
    record_access(session, owner, "C", "Subscription", subscription.id, source=SOURCE,
                  description=f"rest-hook to {endpoint} for {topic.url}")
    return subscription


def _check_smart_scopes(owner: User, topic: Topic, patient_id: int | None) -> None:
    """A SMART app subscribes only to what its token reads, and an app held to its launch patient
    only to that patient's events (notifications are judged by the owner's account, so the token's
    narrowing is fixed into the subscription here)."""
    smart = current_smart_access(owner)
    if smart is None:
        return
    if not (smart.allows("Subscription", "C") and smart.allows(topic.resource_type, "R")):
        raise Forbidden(f"this app's scopes do not allow subscribing to {topic.resource_type}")
    only = smart.patient_restriction(topic.resource_type)
    if only is not None and patient_id != only:
        raise InvalidInput(f"a patient-scoped app must filter by its patient: {topic.resource_type}?patient=Patient/{only}")


def _parse_end(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        end = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise InvalidInput(f"Subscription.end {value!r} is not an instant") from exc
    if end.tzinfo is None:
        raise InvalidInput("Subscription.end needs a time zone")
    return end.astimezone(UTC)


def owned_subscription(session: Session, owner: User, subscription_id: str, *, lock: bool = False) -> FhirSubscription:
    """The owner's subscription; another user's is as absent as a missing one."""
    row = session.get(FhirSubscription, int(subscription_id), with_for_update=lock) if subscription_id.isdigit() else None
    if row is None or row.owner_user_id != owner.id:
        raise NotFound(f"Subscription/{subscription_id} does not exist")
    return row


def own_subscriptions(session: Session, owner: User) -> list[FhirSubscription]:
    return list(session.scalars(select(FhirSubscription).where(FhirSubscription.owner_user_id == owner.id)
                                .order_by(FhirSubscription.id)))


def stop_subscription(session: Session, owner: User, subscription_id: str) -> FhirSubscription:
    """Status off: no new events are numbered for it (what is already owed is still delivered)."""
    row = owned_subscription(session, owner, subscription_id, lock=True)
    row.status = SubscriptionStatus.OFF
    record_access(session, owner, "D", "Subscription", row.id, source=SOURCE, description="stopped (status off)")
    return row


def subscription_to_fhir(row: FhirSubscription, base: str) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": row.endpoint, "payload": "application/fhir+json",
                               "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": row.content}]}}
    if row.headers:
        # Header values are often secrets (the receiver's own token): named, never echoed.
        channel["header"] = [f"{h.partition(':')[0]}: ***" for h in row.headers]
    if row.heartbeat_seconds:
        channel["extension"] = [{"url": EXT_HEARTBEAT, "valueUnsignedInt": row.heartbeat_seconds}]
    body: dict[str, Any] = {
        "resourceType": "Subscription", "id": str(row.id),
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": row.status.value, "reason": row.reason or "Notifications", "criteria": row.topic,
        "channel": channel,
    }
    if row.filter_patient_id is not None:
        resource_type = TOPICS[row.topic].resource_type if row.topic in TOPICS else "Resource"
        body["_criteria"] = {"extension": [{"url": EXT_FILTER,
                                            "valueString": f"{resource_type}?patient=Patient/{row.filter_patient_id}"}]}
    if row.status is SubscriptionStatus.ERROR and row.last_error:
        body["error"] = row.last_error
    if row.end is not None:
        body["end"] = fhir_instant(row.end)
    return validate_resource(body)


# --- recording events -----------------------------------------------------------------------------


def record_event(
    session: Session, occasion: str, focus_type: str, focus_id: int, patient_id: int | None,
    organization_id: int | None = None, *, occasion_key: str,
) -> list[int]:
    """Number and keep one notification per live subscription whose topic fires on `occasion` and
    whose owner may see the event now; returns the notification ids. Idempotent: a second run for
    the same `occasion_key` (a redelivered event) records nothing again."""
    topic_urls = [topic.url for topic in TOPICS.values() if occasion in topic.triggers]
    # Locked in id order: two events at once number each subscription's notifications one after
    # the other, and never deadlock on each other.
    candidates = session.scalars(
        select(FhirSubscription)
        .where(FhirSubscription.topic.in_(topic_urls),
               # Requested: its handshake is under way; what happens meanwhile is owed to it too.
               FhirSubscription.status.in_((SubscriptionStatus.REQUESTED, SubscriptionStatus.ACTIVE,
                                            SubscriptionStatus.ERROR)),
               or_(FhirSubscription.filter_patient_id.is_(None), FhirSubscription.filter_patient_id == patient_id),
               or_(FhirSubscription.end.is_(None), FhirSubscription.end > utcnow()))
        .order_by(FhirSubscription.id).with_for_update()
    ).all()
    recorded = []
    for subscription in candidates:
        owner = session.get(User, subscription.owner_user_id)
        if owner is None or not _owner_may_see(session, owner, focus_type, patient_id, organization_id):
            continue
        exists = session.scalar(select(SubscriptionNotification.id).where(
            SubscriptionNotification.subscription_id == subscription.id,
            SubscriptionNotification.occasion == occasion_key))
        if exists is not None:
            continue
        subscription.events_since_start += 1
        notification = SubscriptionNotification(
            subscription_id=subscription.id, event_number=subscription.events_since_start, occasion=occasion_key,
            focus_type=focus_type, focus_id=focus_id, patient_id=patient_id,
        )
        session.add(notification)
        session.flush()
        enqueue(session, DELIVER_HANDLER, queue="notify", notification_id=notification.id)
        recorded.append(notification.id)
    return recorded


def _owner_may_see(session: Session, owner: User, focus_type: str, patient_id: int | None,
                   organization_id: int | None) -> bool:
    if not owner.active or not may_see_type(owner.role, focus_type) or patient_id is None:
        return False
    if focus_type == "Appointment" and owner.role is not Role.ADMIN:
        # A booking at a centre is that centre's own record, and its staff must hear of a
        # cancellation even when the withdrawn referral no longer opens the patient's chart.
        return owner.organization_id is not None and owner.organization_id == organization_id
    return can_access_patient(session, owner, patient_id)


# --- delivering -----------------------------------------------------------------------------------


def _status_resource(subscription: FhirSubscription, kind: str, base: str,
                     events: list[SubscriptionNotification]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "SubscriptionStatus", "id": str(uuid.uuid4()),
        "status": subscription.status.value,
        "type": kind,
        "eventsSinceSubscriptionStart": str(subscription.events_since_start),
        "subscription": {"reference": f"{base}/Subscription/{subscription.id}"},
        "topic": subscription.topic,
    }
    if events:
        resource["notificationEvent"] = [{
            "eventNumber": str(n.event_number), "timestamp": fhir_instant(n.created_at),
            **({"focus": {"reference": f"{base}/{n.focus_type}/{n.focus_id}"}} if subscription.content != "empty" else {}),
        } for n in events]
    if subscription.status is SubscriptionStatus.ERROR and subscription.last_error:
        resource["error"] = [{"text": subscription.last_error}]
    return resource


def notification_bundle(session: Session, app: Flask, subscription: FhirSubscription, kind: str,
                        events: list[SubscriptionNotification]) -> dict[str, Any]:
    """The `history` Bundle POSTed to the endpoint (backport IG, R4B form)."""
    base = f"{app.config['PUBLIC_BASE_URL']}/fhir"
    status = _status_resource(subscription, kind, base, events)
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{status['id']}", "resource": status,
        "request": {"method": "GET", "url": f"{base}/Subscription/{subscription.id}/$status"},
        "response": {"status": "200"},
    }]
    for n in events:
        if subscription.content == "empty":
            continue
        entry: dict[str, Any] = {"fullUrl": f"{base}/{n.focus_type}/{n.focus_id}"}
        if subscription.content == "full-resource":
            mapping = fhir_registry().get(n.focus_type)
            row = session.get(mapping.model, n.focus_id) if mapping is not None else None
            if mapping is not None and row is not None:
                entry["resource"] = mapping.to_fhir(row)
                entry["request"] = {"method": "PUT", "url": f"{n.focus_type}/{n.focus_id}"}
                entry["response"] = {"status": "200"}
                owner = session.get(User, subscription.owner_user_id)
                record_access(session, owner, "R", n.focus_type, n.focus_id, patient_id=n.patient_id, source=SOURCE,
                              description=f"sent to Subscription/{subscription.id} (event {n.event_number})")
        entries.append(entry)
    return validate_resource({"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history",
                              "timestamp": fhir_instant(utcnow()), "entry": entries})


def _post(app: Flask, subscription: FhirSubscription, bundle: dict[str, Any]) -> str | None:
    """POST the bundle; None when the endpoint took it (2xx), else why not."""
    headers = {"Content-Type": "application/fhir+json"}
    for line in subscription.headers:
        name, _, value = str(line).partition(":")
        headers[name.strip()] = value.strip()
    try:
        response = requests.post(subscription.endpoint, json=bundle, headers=headers, allow_redirects=False,
                                 timeout=float(app.config["SUBSCRIPTION_SEND_TIMEOUT_SECONDS"]))
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"[:400]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code} from the endpoint"


def _note_success(subscription: FhirSubscription, now: datetime | None = None) -> None:
    subscription.last_sent_at = now or utcnow()
    subscription.consecutive_failures = 0
    if subscription.status is SubscriptionStatus.ERROR:
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.last_error = None


def _note_failure(app: Flask, subscription: FhirSubscription, error: str) -> None:
    subscription.consecutive_failures += 1
    subscription.last_error = error
    if (subscription.status is SubscriptionStatus.ACTIVE
            and subscription.consecutive_failures >= int(app.config["SUBSCRIPTION_ERROR_AFTER_FAILURES"])):
        subscription.status = SubscriptionStatus.ERROR
        logger.error("Subscription/%s to %s is in error after %d failures: %s", subscription.id,
                     subscription.endpoint, subscription.consecutive_failures, error)


def retry_delay(app: Flask, attempts: int) -> timedelta:
    base = int(app.config["SUBSCRIPTION_RETRY_SECONDS"])
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), int(app.config["SUBSCRIPTION_RETRY_MAX_SECONDS"])))


def deliver_notification(session: Session, app: Flask, notification_id: int) -> bool:
    """POST one pending notification; True when the endpoint took it. A failure is recorded on the
    notification (tried again by `deliver_due_notifications`, with backoff) and on the
    subscription: the job itself succeeds, the notification stays owed. A delivery already in
    flight elsewhere holds the row lock: this one leaves it to that."""
    notification = session.scalars(select(SubscriptionNotification)
                                   .where(SubscriptionNotification.id == notification_id)
                                   .with_for_update(skip_locked=True)).first()
    if notification is None or notification.status is not NotificationStatus.PENDING:
        return False
    subscription = session.get(FhirSubscription, notification.subscription_id)
    assert subscription is not None  # foreign key
    bundle = notification_bundle(session, app, subscription, "event-notification", [notification])
    notification.attempts += 1
    error = _post(app, subscription, bundle)
    if error is None:
        notification.status, notification.sent_at, notification.last_error = NotificationStatus.SENT, utcnow(), None
        _note_success(subscription)
        return True
    notification.last_error = f"attempt {notification.attempts}: {error}"[:400]
    notification.next_attempt_at = utcnow() + retry_delay(app, notification.attempts)
    _note_failure(app, subscription, error)
    logger.warning("notification %s (Subscription/%s event %s) not delivered: %s; retried at %s", notification.id,
                   subscription.id, notification.event_number, error, notification.next_attempt_at)
    return False


def deliver_due_notifications(session: Session, app: Flask, now: datetime | None = None) -> list[int]:
    """Schedule again the notifications whose retry time has come, and those never tried whose
    first job is overdue (a lost job): the periodic half of "never loses an event"."""
    now = now or utcnow()
    overdue = now - timedelta(seconds=int(app.config["SUBSCRIPTION_CHECK_SECONDS"]))
    due = list(session.scalars(select(SubscriptionNotification.id).where(
        SubscriptionNotification.status == NotificationStatus.PENDING,
        SubscriptionNotification.next_attempt_at <= now,
        or_(SubscriptionNotification.attempts > 0, SubscriptionNotification.created_at < overdue),
    ).order_by(SubscriptionNotification.id).limit(500)))
    for notification_id in due:
        enqueue(session, DELIVER_HANDLER, queue="notify", notification_id=notification_id)
    return due


def send_heartbeats(session: Session, app: Flask, now: datetime | None = None) -> list[int]:
    """A heartbeat to each active subscription that asked for one and has been sent nothing for
    its period; returns the subscription ids it went to. No row is locked during a POST (an event
    being numbered must not wait on a slow endpoint); two sweeps at once may send two heartbeats,
    which tell a receiver nothing wrong."""
    now = now or utcnow()
    due = [row.id for row in session.scalars(select(FhirSubscription).where(
        FhirSubscription.status == SubscriptionStatus.ACTIVE, FhirSubscription.heartbeat_seconds.is_not(None),
    ).order_by(FhirSubscription.id))
        if (row.last_sent_at or row.created_at) + timedelta(seconds=row.heartbeat_seconds or 0) <= now]
    sent = []
    for subscription_id in due:
        subscription = session.get(FhirSubscription, subscription_id)
        assert subscription is not None
        error = _post(app, subscription, notification_bundle(session, app, subscription, "heartbeat", []))
        subscription = session.get(FhirSubscription, subscription_id, with_for_update=True, populate_existing=True)
        assert subscription is not None
        if error is None:
            _note_success(subscription, now)
            sent.append(subscription.id)
        else:
            _note_failure(app, subscription, error)
    return sent


def handshake(session: Session, app: Flask, subscription_id: int) -> bool:
    """The backport IG's handshake: a `handshake` notification to a new subscription's endpoint.
    A 2xx makes it active; anything else puts it in error (its events are still numbered and
    retried, and the first delivery that succeeds makes it active). True when it succeeded."""
    subscription = session.get(FhirSubscription, subscription_id)
    if subscription is None or subscription.status is not SubscriptionStatus.REQUESTED:
        return False
    error = _post(app, subscription, notification_bundle(session, app, subscription, "handshake", []))
    subscription = session.get(FhirSubscription, subscription_id, with_for_update=True, populate_existing=True)
    if subscription is None or subscription.status is not SubscriptionStatus.REQUESTED:
        return False
    if error is None:
        subscription.status = SubscriptionStatus.ACTIVE
        return True
    subscription.status = SubscriptionStatus.ERROR
    subscription.consecutive_failures += 1
    subscription.last_error = f"handshake: {error}"[:400]
    logger.warning("Subscription/%s: handshake with %s failed: %s", subscription.id, subscription.endpoint, error)
    return False


def status_bundle(session: Session, app: Flask, owner: User, subscription_id: str) -> dict[str, Any]:
    """`$status`: a searchset Bundle holding the subscription's SubscriptionStatus."""
    subscription = owned_subscription(session, owner, subscription_id)
    status = _status_resource(subscription, "query-status", f"{app.config['PUBLIC_BASE_URL']}/fhir", [])
    return validate_resource({"resourceType": "Bundle", "type": "searchset", "total": 1,
                              "entry": [{"resource": status, "search": {"mode": "match"}}]})
