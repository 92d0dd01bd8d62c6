"""Notifications: what a person should look at, in their in-app notification centre and by mail.

A stage tells people about an event with `notify(session, users, kind, event_key, **params)` in the
transaction where the event happens (or in the job that reacts to it). That writes one
`Notification` row per recipient and, for a recipient with an address, a mail job in the same
transaction (the outbox of hospital/jobs.py): nothing is mailed about work that rolled back, and
nothing owed is lost when the process dies after the commit.

Promises:
- Once per recipient per event. `event_key` names the event ("report-signed:42"); the database's
  unique key on (user, event key) decides under races, not a check before the insert.
- The reader's language. A row stores its kind and plain parameters, never words: the page words
  it in the reader's language when shown, the mail job in the recipient's (`i18n.for_user`) when
  sent, so a user who switches language reads their old notifications in the new one.
- A mail is sent until an SMTP server takes it, and never again after that. The job marks the row
  sent in the transaction that sent it, under a row lock; a failed send raises, so the job is
  retried (RQ's retries), and `resend_pending_mail`, run periodically, hands still pending mail to
  a new job every `NOTIFICATION_MAIL_RETRY_SECONDS` (an outage longer than RQ's retries).
  The one gap is a crash between the server's "250 OK" and the commit: that mail goes twice.
- No more in a mail than its recipient may see, and no clinical content: what kind of thing
  happened and a link into the app, where signing in shows the rest.

The words of every kind are here, in the core's catalog, so a stage only names the kind: the
stages' own catalogs are not touched for them, and the reader sees one voice across stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app, has_request_context, url_for
from flask_babel import LazyString
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hospital import i18n
from hospital.clock import utcnow
from hospital.errors import NotFound
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.jobs import enqueue
from hospital.models import MailStatus, Notification, Patient, Role, User
from hospital.notify import OutgoingMessage, is_mail_address, notifier
from hospital.periodic import register_periodic
from hospital.web import reader_timezone

logger = logging.getLogger(__name__)

MAIL_HANDLER = "hospital.notifications.send_notification_mail"
RESEND_HANDLER = "hospital.notifications.resend_pending_mail"
# The newest this many are listed; older ones stay in the table (and are counted if unread).
LIST_LIMIT = 100


def _describe_appointment(params: dict[str, Any], reader_zone: str | None) -> dict[str, str]:
    # On the centre's clock: the patient travels to it.
    start = datetime.fromisoformat(params["start"]) if params.get("start") else None
    return {"when": i18n.local_datetime(start, params.get("timezone")),
            "place": params.get("centre") or _("the imaging centre")}


def _describe_task_due(params: dict[str, Any], reader_zone: str | None) -> dict[str, str]:
    # On the patient's own calendar, where the due date was set ("in 3 months, at 09:00").
    due = datetime.fromisoformat(params["due"]) if params.get("due") else None
    return {"when": i18n.local_datetime(due, params.get("timezone") or reader_zone)}


def _describe_emergency_access(params: dict[str, Any], reader_zone: str | None) -> dict[str, str]:
    # On the administrator's own clock: they may be anywhere the hospital's staff are.
    until = datetime.fromisoformat(params["until"]) if params.get("until") else None
    return {"user": str(params.get("user", "")), "until": i18n.local_datetime(until, reader_zone)}


@dataclass(frozen=True)
class NotificationKind:
    """How one kind of notification reads and where it leads. `title` and `body` may hold
    `%(name)s` placeholders, filled from the row's params (through `describe`, given the params
    and the zone of the reader's clock, when they need formatting for the reader: a time on a
    clock, in their language)."""

    name: str
    title: LazyString
    body: LazyString
    endpoint: str
    link_params: tuple[str, ...] = ()
    describe: Callable[[dict[str, Any], str | None], dict[str, str]] | None = field(default=None, compare=False)


KINDS: dict[str, NotificationKind] = {kind.name: kind for kind in (
    NotificationKind(
        "report_signed", _l("Imaging report signed"),
        _l("A radiologist signed the imaging report you requested. Open it to read the result."),
        "ai_services.report_page", ("report_id",)),
    NotificationKind(
        "report_ready", _l("Your imaging report is ready"),
        _l("A radiologist has signed the report on your scan. Your doctor will go through it with you."),
        "ai_services.report_page", ("report_id",)),
    NotificationKind(
        "consultation_message", _l("New message in your consultation"),
        _l("You have a new secure message. Open the consultation to read it and reply."),
        "followup.consultation_page", ("consultation_id",)),
    NotificationKind(
        "appointment_reminder", _l("Reminder: your scan appointment"),
        _l("Your scan is booked for %(when)s at %(place)s."),
        "imaging_orders.appointments_page", (), _describe_appointment),
    NotificationKind(
        "repeat_scan_due", _l("Your repeat scan is due"),
        _l("The repeat scan planned after your last report is due. Please book an appointment for it."),
        "care_plans.plan_page", ("plan_id",)),
    NotificationKind(
        "repeat_scan_ordered", _l("A repeat scan is due"),
        _l("A repeat scan planned in one of your consultations is due and has been ordered for the patient."),
        "care_plans.plan_page", ("plan_id",)),
    NotificationKind(
        "report_amended", _l("Imaging report amended"),
        _l("A radiologist added an addendum to an imaging report you requested. Open it to read the addendum."),
        "ai_services.report_page", ("report_id",)),
    NotificationKind(
        "report_updated", _l("Your imaging report was updated"),
        _l("A radiologist added an addendum to the report on your scan. Your doctor will go through it with you."),
        "ai_services.report_page", ("report_id",)),
    NotificationKind(
        "urgent_consultation", _l("Urgent imaging result"),
        _l("A signed imaging report needs an urgent consultation with your patient. Open the consultation to "
           "arrange it."),
        "followup.consultation_page", ("consultation_id",)),
    NotificationKind(
        "prescription_returned", _l("A prescription was returned by the pharmacy"),
        _l("The pharmacy returned one of your prescriptions with a question. Open the consultation to see why."),
        "followup.consultation_page", ("consultation_id",)),
    NotificationKind(
        "follow_up_due", _l("Reminder: a follow-up step is due"),
        _l("A step of your follow-up plan is due on %(when)s. Open your plan to book it, or write to your doctor."),
        "care_plans.plan_page", ("plan_id",), _describe_task_due),
    NotificationKind(
        "emergency_access_used", _l("Emergency access used"),
        _l("%(user)s used emergency access to open a patient's record, until %(until)s. Please review it."),
        "emergency.review_page", (), _describe_emergency_access),
)}


class UnknownNotificationKind(ValueError):
    """A stage named a kind this module has no words for."""


@dataclass(frozen=True)
class ShownNotification:
    """A notification worded for its reader, ready for a page, a JSON answer or a mail."""

    id: int
    kind: str
    title: str
    body: str
    path: str
    created_at: datetime
    read: bool


# Who is told -------------------------------------------------------------------------------------


def patient_users(session: Session, patient_id: int) -> list[User]:
    """The active accounts of a patient (usually one)."""
    return list(session.scalars(select(User).where(
        User.patient_id == patient_id, User.role == Role.PATIENT, User.active.is_(True)).order_by(User.id)))


def practitioner_users(session: Session, practitioner_id: int, role: Role = Role.CLINICIAN) -> list[User]:
    """The active accounts of a practitioner in `role`."""
    return list(session.scalars(select(User).where(
        User.practitioner_id == practitioner_id, User.role == role, User.active.is_(True)).order_by(User.id)))


def mail_address(user: User) -> str | None:
    """Where `user`'s notifications are mailed: their account's address, else (a patient) their
    record's; None when neither is a usable address (in-app only)."""
    for candidate in (user.email, user.patient.email if user.patient is not None else None):
        if candidate and is_mail_address(candidate):
            return candidate.strip()
    return None


def _record_address(patient: Patient | None) -> str | None:
    if patient is not None and patient.email and is_mail_address(patient.email):
        return patient.email.strip()
    return None


def recipient_address(notification: Notification) -> str | None:
    """Where `notification` is mailed now: its user's address, or its account-less patient's."""
    if notification.user is not None:
        return mail_address(notification.user)
    return _record_address(notification.patient)


# Telling -----------------------------------------------------------------------------------------


def notify(session: Session, recipients: Iterable[User], kind: str, event_key: str, **params: Any) -> list[Notification]:
    """Tell each of `recipients` about the event `event_key`, once: returns the notifications made
    now (none for a recipient told before). Flushes; the caller's unit of work commits, and only then
    does a mail job run."""
    if kind not in KINDS:
        raise UnknownNotificationKind(f"no notification kind {kind!r}; expected one of {sorted(KINDS)}")
    made: list[Notification] = []
    now = utcnow()
    for user in {user.id: user for user in recipients}.values():
        if _find(session, user.id, event_key) is not None:
            # Told before (a periodic job sees the same appointment every run): skip without a
            # failed insert. Only a shortcut: under a race the unique key below decides.
            continue
        address = mail_address(user)
        notification = Notification(
            user_id=user.id, kind=kind, params=params, event_key=event_key, created_at=now,
            mail_status=MailStatus.PENDING if address else MailStatus.NONE,
            mail_retry_at=now + mail_retry_interval() if address else None,
        )
        try:
            with session.begin_nested():
                session.add(notification)
        except IntegrityError:
            # Told already (a job run again, or another worker at the same moment): theirs stands.
            if _find(session, user.id, event_key) is None:
                raise
            continue
        made.append(notification)
        if address:
            enqueue(session, MAIL_HANDLER, queue="notify", notification_id=notification.id)
    if made:
        logger.info("%s: %d notification(s) of kind %s", event_key, len(made), kind)
    return made


def notify_patient(session: Session, patient_id: int, kind: str, event_key: str, **params: Any) -> list[Notification]:
    """Tell a patient about the event `event_key`, once: through their accounts when they have one
    (`notify`); a patient without an account but with a mail address on their record gets the
    mail alone (they have no notification centre to read it in). Nothing when neither."""
    users = patient_users(session, patient_id)
    if users:
        return notify(session, users, kind, event_key, **params)
    if kind not in KINDS:
        raise UnknownNotificationKind(f"no notification kind {kind!r}; expected one of {sorted(KINDS)}")
    patient = session.get(Patient, patient_id)
    if _record_address(patient) is None or _find_for_patient(session, patient_id, event_key) is not None:
        return []
    now = utcnow()
    notification = Notification(
        patient_id=patient_id, kind=kind, params=params, event_key=event_key, created_at=now, read_at=now,
        mail_status=MailStatus.PENDING, mail_retry_at=now + mail_retry_interval(),
    )
    try:
        with session.begin_nested():
            session.add(notification)
    except IntegrityError:
        if _find_for_patient(session, patient_id, event_key) is None:
            raise
        return []
    enqueue(session, MAIL_HANDLER, queue="notify", notification_id=notification.id)
    logger.info("%s: mail of kind %s to a patient without an account", event_key, kind)
    return [notification]


def _find(session: Session, user_id: int, event_key: str) -> Notification | None:
    return session.scalar(select(Notification).where(Notification.user_id == user_id,
                                                     Notification.event_key == event_key))


def _find_for_patient(session: Session, patient_id: int, event_key: str) -> Notification | None:
    return session.scalar(select(Notification).where(Notification.patient_id == patient_id,
                                                     Notification.event_key == event_key))


def mail_retry_interval() -> timedelta:
    return timedelta(seconds=int(current_app.config["NOTIFICATION_MAIL_RETRY_SECONDS"]))


# Reading -----------------------------------------------------------------------------------------


def unread_count(session: Session, user: User) -> int:
    """The badge on the menu link: one query."""
    return int(session.scalar(select(func.count()).select_from(Notification).where(
        Notification.user_id == user.id, Notification.read_at.is_(None))) or 0)


def notifications_of(session: Session, user: User, limit: int = LIST_LIMIT) -> list[Notification]:
    """The reader's own notifications, newest first."""
    return list(session.scalars(select(Notification).where(Notification.user_id == user.id)
                                .order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit)))


def own_notification(session: Session, user: User, notification_id: int) -> Notification:
    """One of the reader's notifications. Someone else's answers as missing, not as forbidden:
    whether it exists is not the reader's business."""
    notification = session.get(Notification, notification_id)
    if notification is None or notification.user_id != user.id:
        raise NotFound(_("There is no such notification."))
    return notification


def mark_read(session: Session, user: User, notification_id: int) -> Notification:
    notification = own_notification(session, user, notification_id)
    if notification.read_at is None:
        notification.read_at = utcnow()
        session.flush()
    return notification


def mark_all_read(session: Session, user: User) -> int:
    """Mark every unread notification of the reader read; returns how many were."""
    result = session.execute(update(Notification)
                             .where(Notification.user_id == user.id, Notification.read_at.is_(None))
                             .values(read_at=utcnow())
                             .execution_options(synchronize_session="fetch"))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def show(notification: Notification) -> ShownNotification:
    """`notification` worded in the current language (the reader's on a page; the recipient's
    inside `i18n.for_user` in a job)."""
    kind = KINDS.get(notification.kind)
    params = dict(notification.params or {})
    if kind is None:
        # Written by a newer version, or a kind since retired: shown plainly, not as an error page.
        logger.warning("notification %s has unknown kind %r", notification.id, notification.kind)
        return ShownNotification(notification.id, notification.kind, _("Notification"), "",
                                 _path("notifications.notifications_page", {}), notification.created_at,
                                 notification.read_at is not None)
    zone = reader_timezone(notification.user) if notification.user is not None else (
        notification.patient.timezone if notification.patient is not None else None)
    values = kind.describe(params, zone) if kind.describe is not None else params
    link = {name: params[name] for name in kind.link_params if name in params}
    return ShownNotification(
        notification.id, kind.name, str(kind.title) % values, str(kind.body) % values,
        _path(kind.endpoint, link), notification.created_at, notification.read_at is not None,
    )


def target_path(notification: Notification) -> str:
    """Where opening `notification` leads: the report, consultation, appointments, plan or review list."""
    return show(notification).path


def _path(endpoint: str, values: dict[str, Any]) -> str:
    """The app path of `endpoint`, inside a request or not (a mail job has no request)."""
    if has_request_context():
        return url_for(endpoint, **values)
    return current_app.url_map.bind("localhost").build(endpoint, values)


# Mail --------------------------------------------------------------------------------------------


def compose_mail(notification: Notification, address: str) -> OutgoingMessage:
    """The mail for `notification`, in its recipient's language: what happened and a link that opens
    it in the app (signing in first)."""
    with i18n.for_user(notification.user):
        shown = show(notification)
        if notification.user is not None:
            link = current_app.config["PUBLIC_BASE_URL"] + _path("notifications.open_notification",
                                                                 {"notification_id": notification.id})
            body = "\n\n".join((
                shown.body,
                _("Open it in the app (you will be asked to sign in): %(link)s", link=link),
                _("This message was sent automatically by the Imaging Hospital. Please do not reply to it; "
                  "sign in to write to your care team."),
            ))
        else:
            # No account to sign in to: no link that would lead nowhere.
            body = "\n\n".join((
                shown.body,
                _("You receive this because your mail address is on your record at the Imaging Hospital. To "
                  "book, or for the details, please call your care team; they can also give you an account "
                  "for the app."),
                _("This message was sent automatically by the Imaging Hospital. Please do not reply to it."),
            ))
        return OutgoingMessage(channel="email", recipient=address, subject=shown.title, body=body + "\n")


def send_notification_mail(session: Session, notification_id: int) -> None:
    """Job: mail one notification, once. A second run after success sends nothing; a failed send
    raises (the job is retried; the row stays pending for `resend_pending_mail`)."""
    notification = session.get(Notification, notification_id, with_for_update=True)
    if notification is None or notification.mail_status is not MailStatus.PENDING:
        logger.info("notification %s is gone or not owed a mail; nothing to send", notification_id)
        return
    address = recipient_address(notification)
    if address is None:
        # The address was removed since: in-app only now.
        notification.mail_status = MailStatus.NONE
        notification.mail_retry_at = None
        return
    notifier().send(compose_mail(notification, address))
    notification.mail_status = MailStatus.SENT
    notification.mailed_at = utcnow()
    notification.mail_retry_at = None


def resend_pending_mail(session: Session, now: datetime | None = None) -> list[int]:
    """Periodic job: hand each mail still owed whose retry time has come to a new job, and move its
    retry time on (so an outage makes one job per mail per interval, not one per run). Rows a send
    job holds locked right now are skipped: that job decides them."""
    now = now or utcnow()
    due = list(session.scalars(
        select(Notification).where(Notification.mail_status == MailStatus.PENDING, Notification.mail_retry_at <= now)
        .order_by(Notification.id).with_for_update(skip_locked=True)))
    for notification in due:
        notification.mail_retry_at = now + mail_retry_interval()
        enqueue(session, MAIL_HANDLER, queue="notify", notification_id=notification.id)
    if due:
        logger.warning("re-sending %d pending notification mail(s)", len(due))
    return [notification.id for notification in due]


def init_app(app: Flask) -> None:
    """Register the resend sweep (hospital.periodic must be set up first)."""
    every = max(1, int(app.config["NOTIFICATION_MAIL_RETRY_SECONDS"]) // 3)
    register_periodic(app, RESEND_HANDLER, every, queue="notify")
