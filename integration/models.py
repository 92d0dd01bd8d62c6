"""HL7 v2 interface tables: every inbound message with the acknowledgement it got, the mappings
from the sender's codes to our centres and practitioners, placer order numbers, and the results
sent out (ORU^R01) with their delivery state. FHIR subscriptions (rest-hook) and the notifications
owed to each, numbered per subscription."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import enum_column


class InboundStatus(str, enum.Enum):
    PROCESSED = "processed"  # answered AA; its effects are stored
    ERROR = "error"  # answered AE: understood, but the content could not be applied (nothing stored)
    REJECTED = "rejected"  # answered AR: not a message we can read or support (nothing stored)


class Hl7Message(Base):
    """One message received over MLLP, kept whatever became of it.

    `(sending_facility, control_id)` is the idempotency key (MSH-4 and MSH-10): a repeat is
    answered with the stored `ack` byte for byte and changes nothing. A message without a readable
    control id (no MSH, binary garbage) is kept with `control_id` NULL, never matched as a repeat.
    """

    __tablename__ = "hl7_message"
    __table_args__ = (UniqueConstraint("sending_facility", "control_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sending_facility: Mapped[str] = mapped_column(String(227), default="")
    sending_application: Mapped[str] = mapped_column(String(227), default="")
    control_id: Mapped[str | None] = mapped_column(String(199))
    message_type: Mapped[str | None] = mapped_column(String(20))
    status: Mapped[InboundStatus] = mapped_column(enum_column(InboundStatus))
    ack_code: Mapped[str] = mapped_column(String(2))
    reason: Mapped[str | None] = mapped_column(Text)
    # Exactly the bytes between the MLLP start and end blocks (cut at the size limit), for replay.
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    truncated: Mapped[bool] = mapped_column(default=False)
    ack: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None]
    replay_count: Mapped[int] = mapped_column(default=0)


class CodeKind(str, enum.Enum):
    CENTRE = "centre"  # MSH-6 receiving facility -> an imaging centre (organization)
    PROVIDER = "provider"  # ORC-12 / OBR-16 ordering provider id -> a practitioner


class Hl7CodeMap(Base):
    """What a sender's code means here, set by an administrator (`hospital hl7 map ...`). Names
    are never matched: two Dr Smiths are two people."""

    __tablename__ = "hl7_code_map"
    __table_args__ = (UniqueConstraint("kind", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[CodeKind] = mapped_column(enum_column(CodeKind))
    code: Mapped[str] = mapped_column(String(227))
    target_id: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PlacerOrder(Base):
    """The ordering system's number for a referral it sent (ORC-2 / OBR-2), per sending facility:
    the key results are sent back under and a resent order is recognised by."""

    __tablename__ = "hl7_placer_order"
    __table_args__ = (UniqueConstraint("sending_facility", "placer_order_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sending_facility: Mapped[str] = mapped_column(String(227))
    placer_order_number: Mapped[str] = mapped_column(String(199))
    referral_id: Mapped[int] = mapped_column(ForeignKey("referral.id"), unique=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("hl7_message.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboundStatus(str, enum.Enum):
    PENDING = "pending"  # the job bus is (re)trying
    SENT = "sent"  # the destination answered AA/CA
    DEAD = "dead"  # given up after the bus's last run: the dead letter an admin resends


class Hl7Outbound(Base):
    """One result message (ORU^R01) for one destination: built once, sent until acknowledged."""

    __tablename__ = "hl7_outbound"
    __table_args__ = (UniqueConstraint("report_id", "occasion", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("diagnostic_report.id"), index=True)
    # What the message reports: "signed", or "amended:<addendum id>" (one message per addendum).
    occasion: Mapped[str] = mapped_column(String(40))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    destination: Mapped[str] = mapped_column(String(200))  # host:port
    control_id: Mapped[str] = mapped_column(String(40), unique=True)
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[OutboundStatus] = mapped_column(enum_column(OutboundStatus), default=OutboundStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class SubscriptionStatus(str, enum.Enum):
    """FHIR Subscription.status (R4B)."""

    REQUESTED = "requested"
    ACTIVE = "active"  # notifications are delivered
    ERROR = "error"  # deliveries keep failing; events are still numbered and kept, and retried
    OFF = "off"  # stopped by its owner: no new events are numbered for it


class FhirSubscription(Base):
    """A rest-hook subscription to one of our topics (`integration.subscription_topics`), owned by
    the user (or the SMART app's user) that created it, who alone sees and stops it.

    `events_since_start` is the counter notifications are numbered from: it is raised under a row
    lock in the transaction that records the notification, so numbers are gap-free and never
    reused, and a receiver de-duplicates a redelivery by its number."""

    __tablename__ = "fhir_subscription"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    topic: Mapped[str] = mapped_column(String(200))
    status: Mapped[SubscriptionStatus] = mapped_column(enum_column(SubscriptionStatus),
                                                       default=SubscriptionStatus.ACTIVE)
    reason: Mapped[str] = mapped_column(String(500), default="")
    # Only events about this patient (the topic's `patient` filter), or every one the owner may see.
    filter_patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    endpoint: Mapped[str] = mapped_column(String(500))
    # "Name: value" lines sent with every POST (the receiver's own authorisation, typically).
    headers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    content: Mapped[str] = mapped_column(String(20), default="id-only")  # empty | id-only | full-resource
    heartbeat_seconds: Mapped[int | None]
    end: Mapped[datetime | None]
    events_since_start: Mapped[int] = mapped_column(default=0)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(400))
    last_sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationStatus(str, enum.Enum):
    PENDING = "pending"  # owed: the delivery job (or the retry sweep) sends it
    SENT = "sent"  # the endpoint answered 2xx


class SubscriptionNotification(Base):
    """One event for one subscription, with its number. Kept until delivered, whatever the endpoint
    does; `occasion` (what happened, e.g. "report-signed:12") makes recording it idempotent."""

    __tablename__ = "fhir_subscription_notification"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_number"),
        UniqueConstraint("subscription_id", "occasion"),
        Index("ix_fhir_subscription_notification_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("fhir_subscription.id"))
    event_number: Mapped[int]
    occasion: Mapped[str] = mapped_column(String(80))
    focus_type: Mapped[str] = mapped_column(String(40))
    focus_id: Mapped[int]
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    status: Mapped[NotificationStatus] = mapped_column(enum_column(NotificationStatus),
                                                       default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
