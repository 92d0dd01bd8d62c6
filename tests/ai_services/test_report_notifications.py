"""A signed report tells the referring clinician and the patient: in the app and by mail, each in
their own language, once however often the event is delivered."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.events import ReportSigned
from ai_services.models import ReviewStatus
from hospital.jobs import deliver
from hospital.models import Notification
from hospital.seed import DemoSeed
from tests.factories import make_preliminary_report
from tests.smtp import Mailbox, mail_through, smtp_server

__all__ = ["mail_through", "smtp_server"]  # fixtures, used by name


def test_signing_tells_the_referrer_and_the_patient_once_each_in_their_language(
    as_role: Any, db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any,
) -> None:
    mail_through(smtp_server.port)
    clinician, patient = demo.users["clinician"], demo.users["patient"]
    clinician.email, clinician.locale, patient.locale = "dr.k@hillside.example.org", "en", "zh_CN"
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    for finding in report.findings:
        finding.review_status = ReviewStatus.ACCEPTED
    db_session.commit()

    signed = as_role("radiologist").post(f"/api/reports/{report.id}/sign", json={"conclusion": "Nodule 8 mm."})
    assert signed.status_code == 200, signed.get_data(as_text=True)
    told = {n.user_id: n for n in db_session.scalars(select(Notification))}
    assert {user_id: n.kind for user_id, n in told.items()} == {clinician.id: "report_signed", patient.id: "report_ready"}
    assert all(n.params == {"report_id": report.id} and n.event_key == f"report-signed:{report.id}"
               for n in told.values())
    assert sorted(m["Subject"] for m in smtp_server.messages) == ["Imaging report signed", "您的影像报告已出"]
    assert all("Nodule" not in m.get_content() for m in smtp_server.messages), "no finding in a mail"

    # The event delivered again (an operator's re-delivery, a retried job): nobody is told twice.
    deliver(db_session, "ai_services.jobs.tell_report_signed",
            ReportSigned(report_id=report.id, patient_id=report.patient_id, referral_id=report.referral_id))
    db_session.commit()
    assert len(db_session.scalars(select(Notification)).all()) == 2 and len(smtp_server.messages) == 2
    listed = as_role("clinician").get("/api/notifications").get_json()
    assert [(n["title"], n["link"]) for n in listed["notifications"]] == [
        ("Imaging report signed", f"/reports/{report.id}")]
