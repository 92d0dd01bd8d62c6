"""The notification centre and its mail: once per recipient per event, in the recipient's language,
through a real SMTP server; the in-app list, its badge and marking read; a mail never sent twice
after success and never lost while the server is down."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital import notifications
from hospital.clock import utcnow
from hospital.config import load_config
from hospital.db import get_db
from hospital.jobs import enqueue
from hospital.models import JobRecord, JobStatus, MailStatus, Notification, User
from hospital.notifications import notify, resend_pending_mail
from hospital.notify import LogNotifier, OutgoingMessage, SmtpNotifier, is_mail_address
from hospital.seed import DemoSeed, seed_demo
from tests.conftest import make_test_app
from tests.pages import csrf_token_of, sign_in
from tests.smtp import Mailbox, free_port, mail_through, smtp_server

__all__ = ["mail_through", "smtp_server"]  # fixtures, used by name

PATIENT_MAIL = "alex.rivera@example.org"  # the demo patient's record
CLINICIAN_MAIL = "clinician@hillside.example.org"


@pytest.fixture()
def readers(db_session: Session, demo: DemoSeed) -> tuple[User, User]:
    """The demo patient reads Chinese (their record has an address); the clinician reads English
    and has an address on their account."""
    patient, clinician = demo.users["patient"], demo.users["clinician"]
    patient.locale = "zh_CN"
    clinician.locale = "en"
    clinician.email = CLINICIAN_MAIL
    db_session.commit()
    return patient, clinician


def notifications_of(session: Session, user: User) -> list[Notification]:
    return list(session.scalars(select(Notification).where(Notification.user_id == user.id).order_by(Notification.id)))


def test_each_recipient_gets_one_mail_per_event_in_their_own_language(
    app: Flask, db_session: Session, readers: tuple[User, User], smtp_server: Mailbox, mail_through: Any,
) -> None:
    patient, clinician = readers
    mail_through(smtp_server.port)
    notify(db_session, [patient, clinician], "consultation_message", "consultation-message:7", consultation_id=7)
    db_session.commit()  # the mail jobs run after the commit (inline here: no Redis)
    notify(db_session, [patient, clinician], "consultation_message", "consultation-message:7", consultation_id=7)
    db_session.commit()

    assert len(smtp_server.messages) == 2
    [chinese] = smtp_server.to(PATIENT_MAIL)
    [english] = smtp_server.to(CLINICIAN_MAIL)
    assert english["Subject"] == "New message in your consultation"
    assert chinese["Subject"] == "您的问诊有新消息"
    # The header travels RFC 2047 encoded (7-bit), the body as UTF-8 text.
    raw_headers = smtp_server.raw[smtp_server.messages.index(chinese)].split(b"\r\n\r\n")[0]
    assert b"Subject: =?utf-8?" in raw_headers and raw_headers.isascii()
    assert chinese.get_content_charset() == "utf-8"
    [told] = notifications_of(db_session, patient)
    assert f"http://127.0.0.1:5000/notifications/{told.id}" in chinese.get_content()
    assert "您有一条新的加密消息" in chinese.get_content() and "Rivera" not in chinese.get_content()
    assert "You have a new secure message" in english.get_content()
    assert told.mail_status is MailStatus.SENT and told.mailed_at is not None
    assert len(notifications_of(db_session, clinician)) == 1


def test_a_second_delivery_after_success_sends_nothing(
    app: Flask, db_session: Session, readers: tuple[User, User], smtp_server: Mailbox, mail_through: Any,
) -> None:
    patient, _clinician = readers
    mail_through(smtp_server.port)
    [told] = notify(db_session, [patient], "report_ready", "report-signed:1", report_id=1)
    db_session.commit()
    assert len(smtp_server.messages) == 1
    enqueue(db_session, notifications.MAIL_HANDLER, queue="notify", notification_id=told.id)
    db_session.commit()
    assert resend_pending_mail(db_session, now=utcnow() + timedelta(days=1)) == []
    db_session.commit()
    assert len(smtp_server.messages) == 1


def test_while_the_smtp_server_is_down_the_mail_waits_and_is_sent_once_it_is_back(
    app: Flask, db_session: Session, readers: tuple[User, User], smtp_server: Mailbox, mail_through: Any,
) -> None:
    patient, _clinician = readers
    mail_through(free_port())  # nothing listens there
    [told] = notify(db_session, [patient], "report_ready", "report-signed:2", report_id=2)
    db_session.commit()
    failed = db_session.scalar(select(JobRecord).where(JobRecord.handler == notifications.MAIL_HANDLER)
                               .order_by(JobRecord.id.desc()))
    assert failed is not None and failed.status is JobStatus.FAILED and "MailNotSent" in (failed.last_error or "")
    db_session.refresh(told)
    assert told.mail_status is MailStatus.PENDING and smtp_server.messages == []

    # Not before its retry time: an outage makes one job per mail per interval, not one per sweep.
    assert resend_pending_mail(db_session) == []
    mail_through(smtp_server.port)  # the server is back
    later = utcnow() + timedelta(seconds=app.config["NOTIFICATION_MAIL_RETRY_SECONDS"] + 1)
    assert resend_pending_mail(db_session, now=later) == [told.id]
    db_session.commit()
    assert [m["Subject"] for m in smtp_server.messages] == ["您的影像报告已出"]
    db_session.refresh(told)
    assert told.mail_status is MailStatus.SENT
    assert resend_pending_mail(db_session, now=later + timedelta(days=1)) == []
    db_session.commit()
    assert len(smtp_server.messages) == 1


def test_a_patient_without_an_address_is_told_in_the_app_only(
    app: Flask, db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any,
) -> None:
    mail_through(smtp_server.port)
    demo.patient.email = None
    [told] = notify(db_session, [demo.users["patient"]], "report_ready", "report-signed:3", report_id=3)
    db_session.commit()
    assert told.mail_status is MailStatus.NONE and smtp_server.messages == []
    assert db_session.scalar(select(func.count()).select_from(JobRecord)
                             .where(JobRecord.handler == notifications.MAIL_HANDLER)) == 0


def test_an_unknown_kind_is_refused_by_name(db_session: Session, demo: DemoSeed) -> None:
    with pytest.raises(notifications.UnknownNotificationKind, match="'report_sined'"):
        notify(db_session, [demo.users["patient"]], "report_sined", "x:1")


def test_the_list_is_newest_first_in_the_readers_language_with_an_unread_badge(
    client: FlaskClient, db_session: Session, readers: tuple[User, User],
) -> None:
    patient, clinician = readers
    [older] = notify(db_session, [patient], "report_ready", "report-signed:5", report_id=5)
    older.created_at = utcnow() - timedelta(hours=1)
    [newer] = notify(db_session, [patient], "consultation_message", "consultation-message:9", consultation_id=9)
    notify(db_session, [clinician], "report_signed", "report-signed:5", report_id=5)
    db_session.commit()
    sign_in(client, "patient")

    page = client.get("/notifications").get_data(as_text=True)
    assert page.index("您的问诊有新消息") < page.index("您的影像报告已出"), "newest first"
    assert page.count('class="card notification unread"') == 2 and "未读" in page
    assert "Imaging report signed" not in page and "影像报告已签发" not in page, "only the reader's own"
    assert re.search(r'<a href="/notifications"[^>]*>通知 <span class="badge badge-count"[^>]*>2</span></a>', page)
    assert f'href="/notifications/{newer.id}"' in page

    listed = client.get("/api/notifications").get_json()
    assert listed["unread"] == 2
    assert [(n["id"], n["link"]) for n in listed["notifications"]] == [
        (newer.id, "/consultations/9"), (older.id, "/reports/5")]


def test_marking_read_one_by_one_by_opening_and_all_at_once(
    client: FlaskClient, db_session: Session, readers: tuple[User, User],
) -> None:
    patient, clinician = readers
    made = [notify(db_session, [patient], "report_ready", f"report-signed:{n}", report_id=n)[0] for n in (11, 12, 13)]
    [theirs] = notify(db_session, [clinician], "report_signed", "report-signed:11", report_id=11)
    db_session.commit()
    sign_in(client, "patient")
    token = csrf_token_of(client.get("/notifications").get_data(as_text=True))

    assert client.post(f"/notifications/{made[0].id}/read", data={"csrf_token": token}).status_code == 302
    assert client.get("/api/notifications").get_json()["unread"] == 2
    opened = client.get(f"/notifications/{made[1].id}")
    assert opened.status_code == 302 and opened.headers["Location"] == "/reports/12"
    assert client.get("/api/notifications").get_json()["unread"] == 1
    # Someone else's is not there at all for this reader, and stays unread.
    assert client.get(f"/notifications/{theirs.id}").status_code == 404
    assert client.post(f"/notifications/{theirs.id}/read", data={"csrf_token": token}).status_code == 404
    assert client.post("/notifications/read", data={"csrf_token": token}).status_code == 302
    assert client.get("/api/notifications").get_json()["unread"] == 0
    page = client.get("/notifications").get_data(as_text=True)
    assert "badge-count" not in page and "unread" not in page.split("<main", 1)[1]
    db_session.refresh(theirs)
    assert theirs.read_at is None


def test_a_mail_link_opened_signed_out_goes_through_sign_in(
    client: FlaskClient, db_session: Session, readers: tuple[User, User],
) -> None:
    patient, _clinician = readers
    [told] = notify(db_session, [patient], "report_ready", "report-signed:21", report_id=21)
    db_session.commit()
    response = client.get(f"/notifications/{told.id}")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")


def test_smtp_is_configured_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("SMTP_HOST", "mail.example.org")
    monkeypatch.setenv("SMTP_PORT", "587")
    monkeypatch.setenv("SMTP_STARTTLS", "yes")
    monkeypatch.setenv("SMTP_USERNAME", "hospital")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    monkeypatch.setenv("SMTP_FROM", "Hospital <noreply@example.org>")
    smtp = SmtpNotifier.from_config(load_config({"SECRET_KEY": "x"}))
    assert (smtp.host, smtp.port, smtp.starttls, smtp.username, smtp.password, smtp.sender) == (
        "mail.example.org", 587, True, "hospital", "secret", "Hospital <noreply@example.org>")
    monkeypatch.setenv("SMTP_PORT", "submission")
    with pytest.raises(ValueError, match="SMTP_PORT must be an integer, got 'submission'"):
        load_config({"SECRET_KEY": "x"})


def test_without_smtp_host_nothing_leaves_the_process(app: Flask) -> None:
    assert app.config["SMTP_HOST"] is None
    assert isinstance(app.extensions["hospital.notifier"], LogNotifier)


def test_only_an_address_is_handed_to_the_smtp_server(smtp_server: Mailbox) -> None:
    smtp = SmtpNotifier("127.0.0.1", smtp_server.port, "Hospital <h@hospital.test>", timeout=5)
    smtp.send(OutgoingMessage(channel="email", recipient="admin", subject="s", body="b"))
    smtp.send(OutgoingMessage(channel="sms", recipient="+86 138 0000 0000", subject="s", body="b"))
    assert smtp_server.messages == []
    assert not is_mail_address("a@b") and not is_mail_address("a b@example.org") and is_mail_address("a@b.cn")


def test_two_workers_telling_the_same_event_at_once_make_one_notification(live_database: str, tmp_path: Any) -> None:
    """The unique key decides, not a look before the insert: the second insert waits for the first
    transaction, then finds its row and makes none of its own (nor a second mail)."""
    app = make_test_app(live_database, tmp_path)
    db = get_db(app)
    with app.app_context(), db.transaction() as session:
        patient_id = seed_demo(session, app).users["patient"].id
    barrier = threading.Barrier(2)
    made: list[int] = []

    def tell() -> None:
        with app.app_context():
            session = db.session()
            try:
                user = session.get(User, patient_id)
                assert user is not None
                barrier.wait()
                made.append(len(notify(session, [user], "report_ready", "report-signed:99", report_id=99)))
                session.commit()
            finally:
                session.close()

    threads = [threading.Thread(target=tell) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(made) == [0, 1]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Notification)) == 1
        assert session.scalar(select(func.count()).select_from(JobRecord)
                              .where(JobRecord.handler == notifications.MAIL_HANDLER)) == 1
