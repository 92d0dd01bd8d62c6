"""The followup pages in the reader's language: a patient reading in Chinese meets no English but
the words people wrote (names, the report's conclusion, messages, the medicine's name); the
prescription's shorthand is spelled out in either language; the urgent badge says what it means;
the menu link carries the unread-message count."""

from __future__ import annotations

import html.parser
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from followup.models import Consultation, FollowUpTask, FormularyItem, MedicationRequest, StockLot
from followup.plan_changes import PLAN_TASK_TEMPLATES
from followup.planning import FOLLOW_UP_TEMPLATES
from followup.service import unread_message_total
from followup.words import TASK_DESCRIPTIONS, dosage_words
from hospital import i18n
from hospital.i18n_catalogs import SAME_IN_EVERY_LANGUAGE
from hospital.seed import DemoSeed
from tests.followup.test_consultation_and_pharmacy import signed_consultation
from tests.followup.test_consultation_pages import post_message
from tests.pages import choose_language, csrf_token_of, sign_in

# Zone abbreviations a time is shown with, the same in every language.
ZONE_NAMES = {"UTC", "GMT", "CET", "CEST", "CST", "JST"}


class _MainText(html.parser.HTMLParser):
    """The text of <main> and the titles, labels and captions in it that a person reads or hears."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.skip = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "main":
            self.depth += 1
        if tag in ("script", "style", "textarea", "option"):  # typed values and choices of data
            self.skip += 1
        if self.depth:
            self.parts.extend(value or "" for name, value in attrs if name in ("title", "aria-label", "data-confirm"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "main":
            self.depth -= 1
        if tag in ("script", "style", "textarea", "option") and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skip:
            self.parts.append(data)


def leftover_english(page: str, written: list[str]) -> list[str]:
    """Latin-letter words in the page's main content once the words people wrote are taken out."""
    parser = _MainText()
    parser.feed(page)
    text = " ".join(parser.parts)
    for value in sorted(filter(None, written), key=len, reverse=True):
        text = text.replace(value, " ")
    words = re.findall(r"[A-Za-z]+", text)
    return [w for w in words if w not in SAME_IN_EVERY_LANGUAGE and w not in ZONE_NAMES]


def people_wrote(db_session: Session, consultation_id: int) -> list[str]:
    consultation = db_session.get(Consultation, consultation_id)
    assert consultation is not None
    meds = db_session.scalars(select(MedicationRequest).where(MedicationRequest.consultation_id == consultation_id))
    return [consultation.patient.display_name, consultation.patient.mrn, consultation.practitioner.display_name,
            consultation.reason.split(": ", 1)[1], *(m.medication_display for m in meds)]


def prescribe_on_page(client: FlaskClient, url: str, demo: DemoSeed, dosage: str) -> None:
    form = {"csrf_token": csrf_token_of(client.get(url).get_data(as_text=True)), "action": "prescribe",
            "medication_code": "J01CA04", "dosage_text": dosage, "quantity": "21", "refills": "0",
            "pharmacy_organization_id": str(demo.pharmacy.id)}
    assert client.post(url, data=form).status_code == 302


@pytest.mark.parametrize(("written", "english", "chinese"), [
    ("1 cap tds PO", "1 capsule three times a day by mouth", "1 粒 每日三次 口服"),
    ("500 mg bd", "500 mg twice a day", "500 mg 每日两次"),
    ("2 tablets q6h prn", "2 tablets every 6 hours when needed", "2 片 每 6 小时一次 必要时"),
    ("1 g od nocte", "1 g once a day at night", "1 g 每日一次 每晚"),
    # Words the prescriber wrote out stay as written; "on" is an English word, not "at night".
    ("one capsule on Mondays", "one capsule on Mondays", "one 粒 on Mondays"),
])
def test_prescription_shorthand_is_spelled_out_in_the_readers_language(
    app: Flask, written: str, english: str, chinese: str
) -> None:
    with app.test_request_context():
        with i18n.in_locale("en"):
            assert dosage_words(written) == english
        with i18n.in_locale("zh_CN"):
            assert dosage_words(written) == chinese


def test_every_task_template_has_words_for_the_reader() -> None:
    descriptions = {t.description for templates in FOLLOW_UP_TEMPLATES.values() for t in templates}
    descriptions |= {t.description for t in PLAN_TASK_TEMPLATES.values()}
    assert descriptions <= set(TASK_DESCRIPTIONS)


def test_the_patient_reads_their_consultation_plan_and_list_in_chinese(
    client: FlaskClient, app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 40, 40))  # 30 mm: urgent
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    prescribe_on_page(client, url, demo, "1 cap tds PO")
    post_message(client, url, "Please book the repeat scan.")

    patient = app.test_client()
    sign_in(patient, "patient")
    choose_language(patient, "zh_CN")
    page = patient.get(url).get_data(as_text=True)
    written = [*people_wrote(db_session, consultation_id), "Please book the repeat scan."]
    assert leftover_english(page, written) == []
    assert "1 粒 每日三次 口服" in page and "tds" not in page  # the patient reads words, not shorthand
    assert "加急" in page and "优先" in page  # the urgent badge, and what it means for them
    assert 'title="加急：医生会优先回复此问诊"' in page
    assert "与转诊医生在线问诊，讨论影像报告" in page  # the task the system wrote, in Chinese

    listing = patient.get("/consultations").get_data(as_text=True)
    assert leftover_english(listing, written) == []
    assert "我的随访" in listing and "已发送至药房" not in listing

    plan_id = db_session.scalar(select(FollowUpTask.care_plan_id).limit(1))
    plan = patient.get(f"/care-plans/{plan_id}").get_data(as_text=True)
    assert leftover_english(plan, written) == []
    assert "复查CT" not in plan and "年" in plan  # due dates as Chinese dates

    refused = patient.post(url, data={"action": "message", "body": " ", "csrf_token": csrf_token_of(page)},
                           follow_redirects=True).get_data(as_text=True)
    assert "消息内容不能为空" in refused


def test_staff_read_the_words_with_the_shorthand_as_written(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    prescribe_on_page(client, url, demo, "1 cap tds PO")
    assert "1 capsule three times a day by mouth" in client.get(url).get_data(as_text=True)

    pharmacist = client.application.test_client()
    sign_in(pharmacist, "pharmacist")
    choose_language(pharmacist, "zh_CN", "/dispense")
    queue = pharmacist.get("/dispense").get_data(as_text=True)
    assert "1 粒 每日三次 口服" in queue and "原文：1 cap tds PO" in queue
    assert leftover_english(queue, [*people_wrote(db_session, consultation_id), "J01CA04", "1 cap tds PO"]) == []


def test_the_menu_link_carries_the_unread_message_count(
    client: FlaskClient, app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    post_message(client, url, "Please book the repeat scan.")
    post_message(client, url, "And bring your old films.")

    patient = app.test_client()
    sign_in(patient, "patient")
    link = re.compile(r'<a href="/consultations"[^>]*>[^<]*<span class="badge badge-count"[^>]*>(\d+)</span></a>')
    home = patient.get("/").get_data(as_text=True)
    assert link.search(home) and link.search(home).group(1) == "2"  # on every page, not only the list
    patient.get(url)  # reading the thread
    assert not link.search(patient.get("/").get_data(as_text=True))
    # The clinician's own messages are not unread for them.
    assert not link.search(client.get("/").get_data(as_text=True))


def test_the_unread_count_is_one_query(app: Flask, db_session: Session, demo: DemoSeed, as_role: Any) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    for body in ("one", "two", "three"):
        assert as_role("clinician").post(f"/api/consultations/{consultation_id}/messages",
                                         json={"body": body}).status_code == 201
    db_session.expire_all()
    patient, clinician = demo.users["patient"], demo.users["clinician"]
    assert patient.role and clinician.role  # loaded before counting
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    engine = db_session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        with app.app_context():
            total = unread_message_total(db_session, patient)
            clinician_total = unread_message_total(db_session, clinician)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert total == 3 and clinician_total == 0 and len(statements) == 2  # one query per reader
    with app.app_context():
        assert unread_message_total(db_session, demo.users["pharmacist"]) == 0


def test_the_referral_path_reads_in_chinese(client: FlaskClient, as_role: Any, demo: DemoSeed) -> None:
    sent = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest", "reason": "Persistent cough, smoker",
        "priority": "urgent", "access_reason": "new patient"}).get_json()
    accepted = as_role("imaging_staff").post(f"/api/referrals/{sent['id']}/accept")
    assert accepted.status_code == 200
    sign_in(client, "clinician")
    choose_language(client, "zh_CN", f"/referrals/{sent['id']}")
    page = client.get(f"/referrals/{sent['id']}").get_data(as_text=True)
    steps = re.findall(r'<span class="step-name">([^<]+)</span>', page)
    assert steps[:3] == ["已发送", "已接受", "已预约"]
    assert "<dd>CT 胸部</dd>" in page and "<dd>加急</dd>" in page and "CT chest（加急）" in page
    # The referral's status word is the referrals stage's; what it says is not checked here.
    status = re.search(r'id="referral-status">[^<]*<strong>([^<]+)</strong>', page)
    assert status is not None
    written = ["CT chest", "Persistent cough, smoker", accepted.get_json()["accession_number"], status.group(1)]
    assert leftover_english(page, written) == []


def test_every_followup_page_of_staff_reads_in_chinese(
    client: FlaskClient, app: Flask, as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 40, 40))
    url = f"/consultations/{consultation_id}"
    sign_in(client, "clinician")
    prescribe_on_page(client, url, demo, "1 cap tds PO")
    med_id = db_session.scalar(select(MedicationRequest.id))
    task = db_session.scalars(select(FollowUpTask).order_by(FollowUpTask.id)).first()
    assert task is not None
    assert as_role("pharmacist").post("/api/pharmacy/stock", json={
        "medication_code": "J01CA04", "lot_number": "AMX-1", "quantity": 40, "expires_on": "2099-01-31"}).status_code == 201
    items = db_session.scalars(select(FormularyItem)).all()
    # The prescriber's form names the shorthand it spells out ("tds", "PO"): codes, not English.
    written = [*people_wrote(db_session, consultation_id), "1 cap tds PO", "tds", "PO", "RxNorm", "ATC",
               *(item.display for item in items), *(item.code for item in items),
               *db_session.scalars(select(StockLot.lot_number))]

    choose_language(client, "zh_CN", url)
    for page_url in (url, f"/care-plans/{task.care_plan_id}", f"/care-plans/tasks/{task.id}/cancel",
                     "/consultations"):
        page = client.get(page_url)
        assert page.status_code == 200, page_url
        assert leftover_english(page.get_data(as_text=True), written) == [], page_url

    # What urgent means for the clinician: the size that made it so.
    assert "加急：已签发报告中有 10 mm 及以上的确认病灶" in client.get("/consultations").get_data(as_text=True)

    pharmacist = app.test_client()
    sign_in(pharmacist, "pharmacist")
    choose_language(pharmacist, "zh_CN", "/dispense")
    for page_url in ("/dispense", f"/dispense/{med_id}?quantity=2", f"/dispense/{med_id}/return", "/pharmacy/stock"):
        page = pharmacist.get(page_url)
        assert page.status_code == 200, page_url
        assert leftover_english(page.get_data(as_text=True), written) == [], page_url
    refused = pharmacist.post(f"/dispense/{med_id}", data={
        "csrf_token": csrf_token_of(page.get_data(as_text=True)), "quantity": "500"}, follow_redirects=True)
    assert "此处方还可发 1 至 21，不能发 500" in refused.get_data(as_text=True)
