"""One inbound HL7 message is one unit of work: read it, apply it, keep it, answer it.

The promise an ACK makes: AA means the message's effects are committed; AE or AR means none of
them are (the work runs in a savepoint that is rolled back), and the message itself is kept in
`hl7_message` with its reason for an administrator to replay once the cause is fixed. The answer
is committed with the message, so a repeat of the same control id from the same sending facility
(MSH-4 + MSH-10: what HL7 senders retry with) gets the stored ACK byte for byte and changes nothing.
Two copies arriving at once are serialised by the unique key: the second waits, then finds the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.errors import DomainError
from integration.hl7_codec import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    Header,
    MessageRefused,
    ReceivedMessage,
    build_ack,
    read_header,
    read_message,
)
from integration.hl7_orders import apply_order
from integration.hl7_patients import SOURCE, Applied, apply_merge, apply_registration
from integration.models import Hl7Message, InboundStatus

logger = logging.getLogger(__name__)

# AuditEvent.outcome for a message we could not apply (FHIR: serious failure).
OUTCOME_FAILED = 8


def _apply(session: Session, msg: ReceivedMessage, message_id: int) -> Applied:
    handlers: dict[str, Callable[[], Applied]] = {
        "ORM^O01": lambda: apply_order(session, msg, message_id),
        "OMI^O23": lambda: apply_order(session, msg, message_id),
        "ADT^A01": lambda: apply_registration(session, msg),
        "ADT^A04": lambda: apply_registration(session, msg),
        "ADT^A08": lambda: apply_registration(session, msg),
        "ADT^A40": lambda: apply_merge(session, msg),
    }
    return handlers[msg.header.message_type]()


def _header_of(raw: bytes) -> Header:
    return read_header(raw.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r"))


def _process(app: Flask, session: Session, row: Hl7Message, raw: bytes, truncated: bool) -> None:
    """Apply the message in a savepoint and fill in `row`'s outcome and ACK."""
    header = _header_of(raw)
    applied: Applied | None = None
    refusal: MessageRefused | None = None
    if truncated:
        refusal = MessageRefused("AR", DATA_TYPE_ERROR,
                                 f"message longer than {app.config['HL7_MAX_MESSAGE_BYTES']} bytes")
    else:
        savepoint = session.begin_nested()
        try:
            msg = read_message(raw)
            header = msg.header
            applied = _apply(session, msg, row.id)
            savepoint.commit()
        except MessageRefused as exc:
            savepoint.rollback()
            refusal = exc
        except DomainError as exc:
            # The platform's own checks refused it (e.g. a centre that is no imaging centre).
            savepoint.rollback()
            refusal = MessageRefused("AE", APPLICATION_INTERNAL_ERROR, str(exc))
    row.message_type = header.message_type or None
    row.sending_application = header.sending_application
    if refusal is None and applied is not None:
        row.status, row.ack_code, row.reason = InboundStatus.PROCESSED, "AA", None
        row.ack = build_ack(header, "AA", application=app.config["HL7_APPLICATION"],
                            facility=app.config["HL7_FACILITY"], text=applied.text)
        patient_id = applied.patient_id
    else:
        assert refusal is not None
        row.status = InboundStatus.REJECTED if refusal.ack_code == "AR" else InboundStatus.ERROR
        row.ack_code, row.reason = refusal.ack_code, refusal.reason
        row.ack = build_ack(header, refusal.ack_code, application=app.config["HL7_APPLICATION"],
                            facility=app.config["HL7_FACILITY"], text=refusal.reason,
                            error_code=refusal.error_code, location=refusal.location)
        patient_id = None
        logger.info("HL7 message %s from %s answered %s: %s", header.control_id or "(no id)",
                    header.sending_facility or "(unknown)", refusal.ack_code, refusal.reason)
    session.flush()
    record_access(session, None, "C", "Hl7Message", row.id, patient_id=patient_id, source=SOURCE,
                  outcome=0 if refusal is None else OUTCOME_FAILED,
                  description=f"{header.message_type or 'unreadable'} {header.control_id or '(no id)'} from "
                              f"{header.sending_facility or '(unknown)'}: {row.ack_code} {row.reason or ''}".strip())


def receive_message(app: Flask, raw: bytes, *, truncated: bool = False) -> bytes:
    """Process one message received over MLLP and return the ACK to send back."""
    header = _header_of(raw) if not truncated else _header_of(raw[:4096])
    facility, control_id = header.sending_facility, header.control_id or None
    db = get_db(app)
    try:
        with db.transaction() as session:
            if control_id is not None:
                stored = _stored_ack(session, facility, control_id)
                if stored is not None:
                    record_access(session, None, "E", "Hl7Message", stored[0], source=SOURCE,
                                  description=f"repeat of {control_id} from {facility}: stored ACK sent again")
                    return stored[1]
            row = Hl7Message(sending_facility=facility, control_id=control_id, status=InboundStatus.REJECTED,
                             ack_code="AR", raw=raw, truncated=truncated, ack=b"", received_at=utcnow())
            session.add(row)
            session.flush()  # a concurrent copy of this message waits here on the unique key
            _process(app, session, row, raw, truncated)
            return row.ack
    except IntegrityError:
        # The same (facility, control id) was committed by another connection meanwhile.
        with db.transaction() as session:
            stored = _stored_ack(session, facility, control_id) if control_id is not None else None
            if stored is None:
                raise
            return stored[1]


def _stored_ack(session: Session, facility: str, control_id: str) -> tuple[int, bytes] | None:
    row = session.execute(select(Hl7Message.id, Hl7Message.ack).where(
        Hl7Message.sending_facility == facility, Hl7Message.control_id == control_id)).first()
    return None if row is None else (row[0], bytes(row[1]))


def replay_message(app: Flask, message_id: int) -> Hl7Message:
    """Apply a kept message again (after its cause was fixed: a provider mapped, a patient
    registered). Its stored ACK becomes the new outcome's, so a later repeat from the sender gets
    that. A message already processed is not applied twice."""
    with get_db(app).transaction() as session:
        row = session.get(Hl7Message, message_id, with_for_update=True)
        if row is None:
            raise LookupError(f"HL7 message {message_id} does not exist")
        if row.status is InboundStatus.PROCESSED:
            raise ValueError(f"HL7 message {message_id} was processed already; replaying it would apply it twice")
        row.replay_count += 1
        row.replayed_at = utcnow()
        record_access(session, None, "E", "Hl7Message", row.id, source=SOURCE,
                      description=f"replay {row.replay_count} of message {row.control_id or '(no id)'}")
        _process(app, session, row, bytes(row.raw), row.truncated)
        session.flush()
        session.expunge(row)
        return row
