"""Core tables every stage shares: people, organisations, users, tokens and browser sessions, audit,
emergency access grants, and the durable job records behind domain events."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Enum,
    FetchedValue,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.dicom_text import dicom_person_name, is_han


def enum_column(enum_cls: type[enum.Enum]) -> Enum:
    """Enums stored by value as plain strings (portable, readable in SQL, no native type)."""
    return Enum(enum_cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Role(str, enum.Enum):
    CLINICIAN = "clinician"
    PATIENT = "patient"
    IMAGING_STAFF = "imaging_staff"
    RADIOLOGIST = "radiologist"
    PHARMACIST = "pharmacist"
    ADMIN = "admin"
    # An AI partner's account: submits its organisation's model packages, reads their statements.
    PARTNER = "partner"
    # A practitioner's or an institution's research account: uploads de-identifiable studies with
    # labels to the research image database, sees only its own contributions, never a record.
    CONTRIBUTOR = "contributor"


class OrganizationKind(str, enum.Enum):
    IMAGING_CENTRE = "imaging_centre"
    CLINIC = "clinic"
    PHARMACY = "pharmacy"
    HOSPITAL = "hospital"
    AI_PARTNER = "ai_partner"


class Organization(Base):
    __tablename__ = "organization"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[OrganizationKind] = mapped_column(enum_column(OrganizationKind))
    # The AE title the centre's modalities are configured with as their Scheduled Station.
    ae_title: Mapped[str | None] = mapped_column(String(16), unique=True)
    # IANA zone of the centre's wall clock: opening hours are local, slots are stored in UTC.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def person_name(family: str, given: str) -> str:
    """A name the way its own script writes it: Chinese (Han) names family first with no space
    ("王小明"), others given first ("Anna Meier"), whatever language the page is in."""
    family, given = family.strip(), given.strip()
    if is_han(family + given):
        return f"{family}{given}"
    return f"{given} {family}".strip()


class Patient(Base):
    __tablename__ = "patient"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Medical record number: the PatientID in DICOM headers.
    mrn: Mapped[str] = mapped_column(String(64), unique=True)
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100))
    birth_date: Mapped[date | None]
    gender: Mapped[str] = mapped_column(String(16), default="unknown")
    phone: Mapped[str | None] = mapped_column(String(40))
    email: Mapped[str | None] = mapped_column(String(200))
    # IANA zone the patient lives in: follow-up dates fall on their calendar, not UTC's.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Set when this record was merged into another (HL7 ADT^A40, hospital.patients.merge_patients):
    # it is kept, for the audit trail and for lookups by its old MRN, but owns nothing any more.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def display_name(self) -> str:
        return person_name(self.family_name, self.given_name)

    @property
    def dicom_name(self) -> str:
        """The name as DICOM carries it: "Wang^Xiaoming=王^小明" for a Han name (`dicom_text`)."""
        return dicom_person_name(self.family_name, self.given_name)



# FHIR string search is "starts with, any case": `lower(column) LIKE 'prefix%'`, which these serve
# (text_pattern_ops: a prefix LIKE uses the index whatever the database's collation).
Index("ix_patient_family_name_lower", func.lower(Patient.family_name).label("family_name_lower"),
      postgresql_ops={"family_name_lower": "text_pattern_ops"})
Index("ix_patient_given_name_lower", func.lower(Patient.given_name).label("given_name_lower"),
      postgresql_ops={"given_name_lower": "text_pattern_ops"})

class Practitioner(Base):
    __tablename__ = "practitioner"

    id: Mapped[int] = mapped_column(primary_key=True)
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100))
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    organization: Mapped[Organization | None] = relationship()

    @property
    def display_name(self) -> str:
        return person_name(self.family_name, self.given_name)


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(enum_column(Role))
    # A patient user is bound to exactly one patient record; staff to a practitioner and an org.
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    practitioner_id: Mapped[int | None] = mapped_column(ForeignKey("practitioner.id"))
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    active: Mapped[bool] = mapped_column(default=True)
    failed_logins: Mapped[int] = mapped_column(default=0)
    # Set when failed sign-ins lock the account: it unlocks by itself at this time (see hospital.auth).
    locked_until: Mapped[datetime | None]
    # Set when an administrator chose the password (a new account, a reset): the user must replace
    # it at their next sign-in, so the administrator never knows a password in use.
    must_change_password: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The IANA zone the user reads times and enters dates in; unset: their patient record's or
    # organisation's zone (hospital.web.reader_timezone).
    timezone: Mapped[str | None] = mapped_column(String(64))
    # The language the user reads pages, mail and PDFs in ("zh_CN", "en"), chosen with the switch on
    # every page; unset: the browser's Accept-Language (hospital.i18n.select_locale).
    locale: Mapped[str | None] = mapped_column(String(16))
    # Where a staff member's notifications are mailed (a patient's: their record's address, see
    # hospital.notifications.mail_address); unset: in-app only.
    email: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    patient: Mapped[Patient | None] = relationship()
    practitioner: Mapped[Practitioner | None] = relationship()
    organization: Mapped[Organization | None] = relationship()


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored, so a database leak yields no usable token."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # A token issued to a SMART app (hospital.smart) carries the app, the scopes granted and the
    # launch patient: it reaches /fhir only, and never more than its user may see.
    smart_client_id: Mapped[int | None] = mapped_column(ForeignKey("smart_client.id"))
    scope: Mapped[str | None] = mapped_column(Text)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))

    user: Mapped[User] = relationship()


class SmartClient(Base):
    """An app registered by an administrator to use SMART on FHIR: a user-facing app (public, or
    confidential by its JWKS) signs users in with the authorization code flow; a backend service
    (JWKS, no redirect URIs) takes client credentials with a signed JWT and acts as `service_user`,
    whose role and relationships bound what it sees."""

    __tablename__ = "smart_client"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Space-separated: the redirect URIs are exact strings, the scopes the most the app may ask.
    redirect_uris: Mapped[str] = mapped_column(Text, default="")
    scopes: Mapped[str] = mapped_column(Text)
    jwks: Mapped[str | None] = mapped_column(Text)
    jwks_uri: Mapped[str | None] = mapped_column(String(500))
    service_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SmartAuthorizationCode(Base):
    """A one-time authorization code (SHA-256 only), bound to its app, redirect URI and PKCE
    challenge."""

    __tablename__ = "smart_authorization_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    smart_client_id: Mapped[int] = mapped_column(ForeignKey("smart_client.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    code_challenge: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class SmartRefreshToken(Base):
    """A refresh token (SHA-256 only). Each use replaces it with a new one; presenting a replaced
    one again means it was copied, so every token of that app and user is revoked."""

    __tablename__ = "smart_refresh_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    smart_client_id: Mapped[int] = mapped_column(ForeignKey("smart_client.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    scope: Mapped[str] = mapped_column(Text)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SmartLaunch(Base):
    """An EHR launch: the platform's page opened an app for a user with a patient in context; the
    app passes the opaque `launch` value back when it asks for authorization."""

    __tablename__ = "smart_launch"

    id: Mapped[int] = mapped_column(primary_key=True)
    launch_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    smart_client_id: Mapped[int] = mapped_column(ForeignKey("smart_client.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    expires_at: Mapped[datetime]


class SmartAssertionUse(Base):
    """A client assertion's `jti`, kept until the assertion expires so it cannot be replayed."""

    __tablename__ = "smart_assertion_use"
    __table_args__ = (UniqueConstraint("smart_client_id", "jti"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    smart_client_id: Mapped[int] = mapped_column(ForeignKey("smart_client.id"))
    jti: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class BrowserSession(Base):
    """A signed-in browser. The signed cookie carries a random id whose SHA-256 is stored here, so a
    session can be ended on the server: sign-out (a copied cookie stops working too), and every
    session of an account when it is deactivated, locked, or its password changes."""

    __tablename__ = "browser_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    session_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Append-only record of who touched which record, when, and with what outcome."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_patient_recorded", "patient_id", "recorded_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"), index=True)
    # FHIR AuditEvent.action: C create, R read, U update, D delete, E execute.
    action: Mapped[str] = mapped_column(String(1))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    # FHIR outcome code: 0 success, 4 minor failure (e.g. denied), 8 serious, 12 major.
    outcome: Mapped[int] = mapped_column(default=0)
    description: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32), default="api")
    # The hash chain (see hospital.audit): the previous row's row_hash, and the SHA-256 of this row's
    # fields and prev_hash. Filled by the database's trigger (SQLite: by hospital.audit), never by hand.
    prev_hash: Mapped[str | None] = mapped_column(String(64), server_default=FetchedValue())
    row_hash: Mapped[str | None] = mapped_column(String(64), server_default=FetchedValue())

    # One row at a time, so each row's chain link on SQLite sees the row saved before it.
    __mapper_args__ = {"batch": False}


class EmergencyAccess(Base):
    """A "break the glass" grant: a user with no care relationship opened a patient's record in an
    emergency, with the reason they gave, until `expires_at` (see hospital.emergency). Kept for
    ever, with the administrator's review of it."""

    __tablename__ = "emergency_access"
    __table_args__ = (Index("ix_emergency_access_user_expires", "user_id", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    # When the administrators were told (the alert job sets it, so a retried job tells them once).
    alerted_at: Mapped[datetime | None]
    reviewed_at: Mapped[datetime | None]
    reviewed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    review_note: Mapped[str | None] = mapped_column(Text)

    user: Mapped[User] = relationship(foreign_keys=[user_id])
    patient: Mapped[Patient] = relationship()
    reviewed_by: Mapped[User | None] = relationship(foreign_keys=[reviewed_by_user_id])


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobRecord(Base):
    """Durable state of one unit of background work, written in the transaction that causes it.

    Redis only carries the record id; if Redis loses the queue, the record still says what is owed.
    """

    __tablename__ = "job_record"
    __table_args__ = (Index("ix_job_record_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    handler: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(40), default="default")
    event: Mapped[str | None] = mapped_column(String(80))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The request, job or DICOM association that caused this work (hospital.logging_setup): the
    # worker logs under it, so one id follows a request into its jobs. Not an identifier of anyone.
    request_id: Mapped[str | None] = mapped_column(String(80))


class ResourceVersion(Base):
    """One version of a FHIR-visible record: what it looked like as FHIR after a change.

    Written in the transaction of the change (by `hospital.fhir.versions`), so a rolled-back
    change leaves no version behind. Serves vread, history and the ETag of every read. No foreign
    keys: a version outlives the shape of the row it was taken from.
    """

    __tablename__ = "resource_version"
    __table_args__ = (
        UniqueConstraint("resource_type", "resource_id", "version_id"),
        # History pages walk it newest first, ties by id, from a keyset cursor (hospital.fhir.paging).
        Index("ix_resource_version_type_updated", "resource_type", "last_updated", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[int]
    version_id: Mapped[int]
    last_updated: Mapped[datetime] = mapped_column(default=utcnow)
    method: Mapped[str] = mapped_column(String(8))  # POST, PUT or DELETE, as in Bundle.entry.request
    # The patient compartment the version belongs to, for authorising history searches.
    patient_id: Mapped[int | None] = mapped_column(index=True)
    resource: Mapped[dict[str, Any] | None]


class ResourceLastUpdated(Base):
    """When each FHIR-visible record last changed: one row per record, the time and number of its
    latest version, kept by a trigger on resource_version inserts (migration 0042), in the
    transaction of the change, whichever code wrote the version (an older release's too, while a
    rolling upgrade runs both).

    `_sort=_lastUpdated` and `_lastUpdated=` searches join it and walk its index in order, instead
    of finding each row's newest version among all versions (a subquery per row). A record never
    versioned (bulk-loaded around the app) has no row here, as it has no meta.lastUpdated.
    """

    __tablename__ = "resource_last_updated"
    __table_args__ = (Index("ix_resource_last_updated_type_time", "resource_type", "last_updated", "resource_id"),)

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    version_id: Mapped[int]
    last_updated: Mapped[datetime]


class RetentionRule(Base):
    """How long one class of data is kept (`hospital.retention`): set by an administrator. A class
    without a rule is kept for ever; the retention run deletes only what a rule names."""

    __tablename__ = "retention_rule"

    id: Mapped[int] = mapped_column(primary_key=True)
    # images, ai_outputs, audit, job_records (hospital.retention.DataClass)
    data_class: Mapped[str] = mapped_column(String(32), unique=True)
    keep_days: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))


class LegalHold(Base):
    """Keeps a patient's data, or one study, whatever the retention rules say, until released."""

    __tablename__ = "legal_hold"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(default=utcnow)
    placed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    released_at: Mapped[datetime | None]
    released_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))


class AuditCheckpoint(Base):
    """Audit rows up to `up_to_event_id` were archived to a file (its SHA-256 here) and then removed
    from `audit_event`; `head_hash` is the last archived row's hash, which the first remaining row's
    `prev_hash` must equal, so the chain still verifies. Append-only, like the trail."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_event_id: Mapped[int]
    up_to_event_id: Mapped[int] = mapped_column(unique=True)
    rows: Mapped[int]
    head_hash: Mapped[str] = mapped_column(String(64))
    archive_name: Mapped[str] = mapped_column(String(200))
    archive_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailStatus(str, enum.Enum):
    NONE = "none"  # the recipient has no address: in-app only
    PENDING = "pending"  # owed: a job sends it, the resend sweep tries again while it stays pending
    SENT = "sent"  # the SMTP server took it; never sent again


class Notification(Base):
    """One thing a user should look at: in their notification centre and, where they have an
    address, by mail.

    It stores what happened (`kind` and plain `params`: ids, an ISO time, a zone), never worded
    text: the words are chosen when it is read or mailed, in the reader's language at that moment
    (hospital.notifications). `event_key` names the event ("report-signed:42"); unique per user, so
    an event told twice (a job run again, two workers racing) makes one notification and one mail.
    (Not followup's `notification` table: that one logs the follow-up stage's own reminders.)

    The recipient is a user, or (`patient_id`) a patient without an account whose record has a mail
    address: they have no notification centre, so theirs is a mail only.
    """

    __tablename__ = "user_notification"
    __table_args__ = (
        UniqueConstraint("user_id", "event_key"),
        UniqueConstraint("patient_id", "event_key"),
        CheckConstraint("(user_id IS NULL) <> (patient_id IS NULL)", name="one_recipient"),
        Index("ix_user_notification_user_read", "user_id", "read_at"),
        Index("ix_user_notification_mail", "mail_status", "mail_retry_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    event_key: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]
    mail_status: Mapped[MailStatus] = mapped_column(enum_column(MailStatus), default=MailStatus.NONE)
    # When the resend sweep next hands a still pending mail to a job (after the first job's
    # retries had their chance); moved on each time it does.
    mail_retry_at: Mapped[datetime | None]
    mailed_at: Mapped[datetime | None]

    user: Mapped[User | None] = relationship()
    patient: Mapped[Patient | None] = relationship()
