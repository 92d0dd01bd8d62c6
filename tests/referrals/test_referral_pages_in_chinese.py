"""Issue 17: the clinician's referral pages in Chinese: every word of the list and the form, the
priority and status as words, dates through Babel, the messages after registering a patient and
sending a referral, and Chinese names written family name first."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import Patient
from hospital.seed import DemoSeed
from referrals.models import Priority, Referral
from tests.factories import make_referral
from tests.pages import CHINESE, ENGLISH, catalog_english_in, choose_language, csrf_token_of, main_text, sign_in


def test_the_referral_list_reads_in_chinese(client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    referral = make_referral(db_session, demo)
    referral.priority = Priority.URGENT
    db_session.commit()
    sign_in(client, "clinician")
    html = client.get("/referrals", headers=CHINESE).get_data(as_text=True)
    text = main_text(html)
    assert "我的转诊" in text and "新建转诊" in text and "加急" in text and "等待影像中心接受" in text
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日 周. \d\d:\d\d", text), text  # Babel, not strftime
    assert catalog_english_in(text, "referrals") == []
    assert "urgent" not in text and "Waiting for acceptance" not in text
    english = main_text(client.get("/referrals", headers=ENGLISH).get_data(as_text=True))
    assert "Urgent" in english and "Waiting for acceptance" in english


def test_the_referral_form_reads_in_chinese_by_the_switch(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    choose_language(client, "zh_CN", "/referrals/new")
    html = client.get("/referrals/new", headers=ENGLISH).get_data(as_text=True)
    text = main_text(html)
    assert "新建影像检查转诊" in text and "登记新患者" in text and "发送转诊" in text
    assert "计算机断层扫描（CT）" in html and ">常规<" in html and ">女<" in html
    assert catalog_english_in(text, "referrals") == []


def test_registering_and_referring_answer_in_chinese_and_write_chinese_names_family_first(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    sign_in(client, "clinician")
    page = client.get("/referrals/new", headers=CHINESE).get_data(as_text=True)
    registered = client.post("/referrals/new", headers=CHINESE, follow_redirects=True, data={
        "action": "register_patient", "family_name": "王", "given_name": "小明", "birth_date": "1961-04-02",
        "gender": "male", "mrn": "MRN-8888", "csrf_token": csrf_token_of(page)})
    html = registered.get_data(as_text=True)
    assert "患者 王小明 已登记，病历号 MRN-8888；已在下方为您选中。" in html
    assert re.search(r'<option value="\d+" selected>王小明 \(MRN-8888\)</option>', html), html
    patient = db_session.scalars(select(Patient).where(Patient.mrn == "MRN-8888")).one()
    again = client.post("/referrals/new", headers=CHINESE, data={
        "action": "register_patient", "family_name": "李", "given_name": "华", "mrn": "MRN-8888",
        "gender": "female", "csrf_token": csrf_token_of(html)})
    assert again.status_code == 422 and "此病历号无法使用；请留空，系统将自动分配" in again.get_data(as_text=True)

    refused = client.post("/referrals/new", headers=CHINESE, data={
        "patient_id": str(patient.id), "performer_organization_id": str(demo.imaging_centre.id), "modality": "CT",
        "body_part": "CHEST", "priority": "routine", "reason": " ", "csrf_token": csrf_token_of(html)})
    assert refused.status_code == 422 and "请填写检查原因" in refused.get_data(as_text=True)

    sent = client.post("/referrals/new", headers=CHINESE, follow_redirects=True, data={
        "patient_id": str(patient.id), "performer_organization_id": str(demo.imaging_centre.id), "modality": "CT",
        "body_part": "CHEST", "priority": "routine", "reason": "咳嗽", "access_reason": "新登记的患者",
        "csrf_token": csrf_token_of(html)})
    referral = db_session.scalars(select(Referral).where(Referral.patient_id == patient.id)).one()
    assert f"转诊 {referral.id} 已发送至 {demo.imaging_centre.name}。其状态见下方。" in sent.get_data(as_text=True)
