"""Care after the report: the consultation (a virtual Encounter), its follow-up plan and tasks,
and prescriptions (MedicationRequest) with their dispenses."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Patient, Practitioner, User, enum_column


class ConsultationStatus(str, enum.Enum):
    PLANNED = "planned"
    IN_PROGRESS = "in-progress"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class Consultation(Base):
    """A virtual visit opened by a signed report, held by the referring clinician."""

    __tablename__ = "consultation"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: a signed report opens exactly one consultation, however often the job runs.
    report_id: Mapped[int] = mapped_column(ForeignKey("diagnostic_report.id"), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    practitioner_id: Mapped[int] = mapped_column(ForeignKey("practitioner.id"), index=True)
    status: Mapped[ConsultationStatus] = mapped_column(enum_column(ConsultationStatus), default=ConsultationStatus.PLANNED)
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    reason: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]

    patient: Mapped[Patient] = relationship()
    practitioner: Mapped[Practitioner] = relationship()


class Message(Base):
    """A secure message in a consultation between the clinician and the patient (FHIR Communication)."""

    __tablename__ = "consultation_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    consultation_id: Mapped[int] = mapped_column(ForeignKey("consultation.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    sender_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    # "patient" when the clinician writes, "clinician" when the patient does.
    recipient_role: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]

    sender: Mapped[User] = relationship()
    consultation: Mapped[Consultation] = relationship()


class CarePlan(Base):
    __tablename__ = "care_plan"

    id: Mapped[int] = mapped_column(primary_key=True)
    consultation_id: Mapped[int] = mapped_column(ForeignKey("consultation.id"), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    consultation: Mapped[Consultation] = relationship()
    tasks: Mapped[list[FollowUpTask]] = relationship(back_populates="care_plan", order_by="FollowUpTask.id")


class TaskStatus(str, enum.Enum):
    REQUESTED = "requested"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class FollowUpTask(Base):
    __tablename__ = "followup_task"

    id: Mapped[int] = mapped_column(primary_key=True)
    care_plan_id: Mapped[int] = mapped_column(ForeignKey("care_plan.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # repeat-scan, lab-test, visit, review-report
    description: Mapped[str] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(enum_column(TaskStatus), default=TaskStatus.REQUESTED)
    # Why the responsible clinician cancelled it (FHIR Task.statusReason), when cancelled by hand.
    status_reason: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime | None]
    # The referral a repeat-scan task turned into when it fell due.
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]

    care_plan: Mapped[CarePlan] = relationship(back_populates="tasks")


class Notification(Base):
    """A reminder sent (or attempted) to a patient before the notification centre: kept as the
    record of what was sent, and read so a task reminded then is not reminded again. New reminders
    are `hospital.models.Notification` rows (followup.planning.send_due_reminders)."""

    __tablename__ = "notification"
    __table_args__ = (UniqueConstraint("task_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("followup_task.id"))
    kind: Mapped[str] = mapped_column(String(40))  # e.g. task-due-reminder
    channel: Mapped[str] = mapped_column(String(16))  # email, sms, log
    recipient: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)


class MedicationRequestStatus(str, enum.Enum):
    ACTIVE = "active"
    # Returned to the prescriber by the pharmacy: halted until the prescriber acts (`status_reason`).
    ON_HOLD = "on-hold"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class FormularyItem(Base):
    """One coded medicinal product (ATC or RxNorm) the pharmacies stock and clinicians may
    prescribe. Prescriptions and stock name it by `code`; ATC codes are letters and digits,
    RxNorm codes digits only, so one code names one item whatever its system."""

    __tablename__ = "formulary_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    system: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(64), unique=True)
    display: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)


class MedicationRequest(Base):
    __tablename__ = "medication_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    consultation_id: Mapped[int | None] = mapped_column(ForeignKey("consultation.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    prescriber_id: Mapped[int] = mapped_column(ForeignKey("practitioner.id"))
    pharmacy_organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"), index=True)
    medication_code: Mapped[str] = mapped_column(String(64))  # a formulary item's code (older rows: free text)
    # The code system of the formulary item (ATC, RxNorm); None on rows written before the formulary.
    medication_system: Mapped[str | None] = mapped_column(String(100))
    medication_display: Mapped[str] = mapped_column(String(200))
    dosage_text: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int]
    refills: Mapped[int] = mapped_column(default=0)
    status: Mapped[MedicationRequestStatus] = mapped_column(
        enum_column(MedicationRequestStatus), default=MedicationRequestStatus.ACTIVE
    )
    # Why the pharmacy returned it to the prescriber (FHIR statusReason text), when on hold.
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    patient: Mapped[Patient] = relationship()
    prescriber: Mapped[Practitioner] = relationship()
    dispenses: Mapped[list[MedicationDispense]] = relationship(back_populates="request", order_by="MedicationDispense.id")


class StockLot(Base):
    """Units of one lot of one formulary item on hand at one pharmacy, with the lot's expiry date
    (the last day it may be used; None only for stock recorded before lots were). Dispensing
    takes from lots in date, the one that expires first first, under row locks, so two
    pharmacists racing for the last unit cannot both succeed."""

    __tablename__ = "pharmacy_stock_lot"
    __table_args__ = (UniqueConstraint("pharmacy_organization_id", "medication_code", "lot_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pharmacy_organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    medication_code: Mapped[str] = mapped_column(String(64))
    lot_number: Mapped[str] = mapped_column(String(64))
    expires_on: Mapped[date | None]
    quantity_on_hand: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MedicationDispense(Base):
    __tablename__ = "medication_dispense"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("medication_request.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    quantity: Mapped[int]
    dispensed_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    dispensed_at: Mapped[datetime] = mapped_column(default=utcnow)

    request: Mapped[MedicationRequest] = relationship(back_populates="dispenses")
    dispensed_by: Mapped[User] = relationship()
