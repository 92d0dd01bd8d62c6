"""Billing tables: the price catalog (ChargeItemDefinition), charge items for billable events, and
invoices. Money is integer minor units with an ISO 4217 currency, never floats."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Organization, Patient, enum_column


class ServiceLine(str, enum.Enum):
    SCAN = "scan"
    AI_ANALYSIS = "ai-analysis"
    CONSULTATION = "consultation"
    MEDICATION = "medication"


class CatalogEntry(Base):
    """A price for a service code, optionally specific to one organisation, within dates."""

    __tablename__ = "catalog_entry"
    __table_args__ = (Index("ix_catalog_entry_code", "code", "organization_id", "effective_from"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    display: Mapped[str] = mapped_column(String(200))
    service_line: Mapped[ServiceLine] = mapped_column(enum_column(ServiceLine))
    # Null: the platform-wide price; set: that organisation's own price, which wins.
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    unit_price_minor: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    effective_from: Mapped[datetime]
    effective_to: Mapped[datetime | None]

    organization: Mapped[Organization | None] = relationship()


class ChargeStatus(str, enum.Enum):
    BILLABLE = "billable"
    BILLED = "billed"
    NOT_BILLABLE = "not-billable"


class ChargeItem(Base):
    """One billable event. `event_key` is unique, so a job that runs twice charges once."""

    __tablename__ = "charge_item"
    __table_args__ = (UniqueConstraint("event_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_key: Mapped[str] = mapped_column(String(120))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    catalog_entry_id: Mapped[int] = mapped_column(ForeignKey("catalog_entry.id"))
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    service_line: Mapped[ServiceLine] = mapped_column(enum_column(ServiceLine))
    code: Mapped[str] = mapped_column(String(64))
    display: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(default=1)
    unit_price_minor: Mapped[int]
    total_minor: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    # The record that caused the charge, as a FHIR reference ("ImagingStudy/4").
    service_reference: Mapped[str] = mapped_column(String(120))
    # True when the chain that led here started from an AI finding (AI-enabled revenue).
    ai_attributed: Mapped[bool] = mapped_column(default=False)
    # A partner model package's analysis: which version ran ("name version") and whose it is, with
    # the partner's share of this charge (basis points) as it stood when charged, for statements.
    model_package_id: Mapped[int | None] = mapped_column(ForeignKey("model_package.id"))
    model_label: Mapped[str | None] = mapped_column(String(130))
    partner_organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"), index=True)
    partner_share_bp: Mapped[int | None]
    status: Mapped[ChargeStatus] = mapped_column(enum_column(ChargeStatus), default=ChargeStatus.BILLABLE)
    occurred_at: Mapped[datetime]
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoice.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    catalog_entry: Mapped[CatalogEntry] = relationship()
    invoice: Mapped[Invoice | None] = relationship(back_populates="items")


class Coverage(Base):
    """A patient's insurance (FHIR Coverage): the insurer pays `share_basis_points` of each invoice."""

    __tablename__ = "coverage"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    payer_name: Mapped[str] = mapped_column(String(200))
    member_id: Mapped[str] = mapped_column(String(64))
    # Basis points (1/100 of a percent), so shares stay integers: 8000 = the insurer pays 80 %.
    share_basis_points: Mapped[int]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InvoiceStatus(str, enum.Enum):
    ISSUED = "issued"
    BALANCED = "balanced"
    CANCELLED = "cancelled"


class Invoice(Base):
    __tablename__ = "invoice"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    status: Mapped[InvoiceStatus] = mapped_column(enum_column(InvoiceStatus), default=InvoiceStatus.ISSUED)
    currency: Mapped[str] = mapped_column(String(3))
    total_minor: Mapped[int]
    # total = insurer share + patient share; each payer's payments are tracked separately.
    insurer_share_minor: Mapped[int] = mapped_column(default=0)
    patient_share_minor: Mapped[int] = mapped_column(default=0)
    coverage_id: Mapped[int | None] = mapped_column(ForeignKey("coverage.id"))
    paid_minor: Mapped[int] = mapped_column(default=0)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]

    patient: Mapped[Patient] = relationship()
    coverage: Mapped[Coverage | None] = relationship()
    items: Mapped[list[ChargeItem]] = relationship(back_populates="invoice", order_by="ChargeItem.id")
    payments: Mapped[list[Payment]] = relationship(back_populates="invoice", order_by="Payment.id")


class Payer(str, enum.Enum):
    PATIENT = "patient"
    INSURER = "insurer"


class PaymentKind(str, enum.Enum):
    PAYMENT = "payment"
    REFUND = "refund"


class Payment(Base):
    """Money received for (or returned on) an invoice. `idempotency_key` is unique: a payment
    posted twice (a retried request, a double click) is recorded once."""

    __tablename__ = "payment"
    __table_args__ = (UniqueConstraint("idempotency_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"), index=True)
    payer: Mapped[Payer] = mapped_column(enum_column(Payer))
    kind: Mapped[PaymentKind] = mapped_column(enum_column(PaymentKind))
    amount_minor: Mapped[int]  # always positive; `kind` says which way it went
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(120))
    reference: Mapped[str | None] = mapped_column(String(200))
    recorded_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    invoice: Mapped[Invoice] = relationship(back_populates="payments")
