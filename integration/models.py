"""HL7 v2 interface tables: every inbound message with the acknowledgement it got, the mappings
from the sender's codes to our centres and practitioners, placer order numbers, and the results
sent out (ORU^R01) with their delivery state."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, Text, UniqueConstraint
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
