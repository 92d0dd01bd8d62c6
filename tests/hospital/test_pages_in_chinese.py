"""Issue 17: the core's pages in the reader's language. Each key page reads in Chinese (by the
browser's Accept-Language and by the switch) with none of its English left in the main content; the
home page greets the person by name; a record that is someone else's says so in plain words, and a
missing page or a failure on our side too, without the server's or FHIR's vocabulary."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport
from hospital.seed import DemoSeed
from tests.conftest import make_test_app
from tests.factories import make_preliminary_report
from tests.pages import (
    CHINESE,
    ENGLISH,
    catalog_english_in,
    choose_language,
    csrf_token_of,
    latin_words,
    main_text,
    sign_in,
)
from tests.security.care_world import make_care_world


@pytest.fixture()
def someone_elses_report(db_session: Session, demo: DemoSeed) -> DiagnosticReport:
    """A report on demo.patient's scan: not patient2's to see."""
    report = make_preliminary_report(db_session, demo, [(10, 10, 20, 20)])
    db_session.commit()
    return report


# --- the home page ---------------------------------------------------------------------------------


def test_home_greets_the_person_by_name_and_role_in_both_languages(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    demo.patient.family_name, demo.patient.given_name = "王", "小明"
    db_session.commit()
    sign_in(client, "patient")
    english = main_text(client.get("/", headers=ENGLISH).get_data(as_text=True))
    assert "Welcome, 王小明" in english and "Your work as Patient:" in english
    assert "Welcome, patient" not in english  # the name the record holds, not the username
    chinese = client.get("/", headers=CHINESE).get_data(as_text=True)
    assert "<h1>王小明，您好</h1>" in chinese and "患者可用的功能：" in chinese
    assert "谁查看了我的病历" in main_text(chinese) and "科研" in main_text(chinese)  # the core's and research's links


def test_a_clinicians_home_names_them_and_their_role(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    name = demo.users["clinician"].practitioner.display_name
    chinese = main_text(client.get("/", headers=CHINESE).get_data(as_text=True))
    assert f"{name}，您好" in chinese and "转诊医生可用的功能" in chinese
    assert "我的转诊" in chinese and "新建转诊" in chinese  # the menu's words, in the reader's language


# --- not yours to see, not found, our failure --------------------------------------------------------


def test_a_patient_refused_someone_elses_report_reads_plain_english(
    client: FlaskClient, demo: DemoSeed, someone_elses_report: DiagnosticReport,
) -> None:
    sign_in(client, "patient2")
    refused = client.get(f"/reports/{someone_elses_report.id}", headers=ENGLISH)
    assert refused.status_code == 403
    text = main_text(refused.get_data(as_text=True))
    assert "This is not yours to see" in text
    assert "belongs to another person's care" in text and "ask the doctor who referred you" in text
    # No resource types, no status codes, no machine wording for a patient.
    assert "DiagnosticReport" not in text and "403" not in text and "no access" not in text
    assert "emergency access" not in text  # that is for staff


def test_a_patient_refused_someone_elses_report_reads_it_in_chinese_by_browser_and_by_switch(
    client: FlaskClient, demo: DemoSeed, someone_elses_report: DiagnosticReport,
) -> None:
    sign_in(client, "patient2")
    url = f"/reports/{someone_elses_report.id}"
    by_browser = client.get(url, headers=CHINESE)
    assert by_browser.status_code == 403
    text = main_text(by_browser.get_data(as_text=True))
    assert "您无权查看此内容" in text and "为您开具转诊的医生" in text and "前往您的首页" in text
    assert latin_words(text, allowed=set()) == [], text

    choose_language(client, "zh_CN", "/")
    by_switch = main_text(client.get(url, headers=ENGLISH).get_data(as_text=True))
    assert "您无权查看此内容" in by_switch and latin_words(by_switch, allowed=set()) == []


def test_the_refusal_page_offers_the_way_back_it_came_from(
    client: FlaskClient, demo: DemoSeed, someone_elses_report: DiagnosticReport,
) -> None:
    sign_in(client, "patient2")
    came_from = "http://localhost/my-record-access"
    page = client.get(f"/reports/{someone_elses_report.id}", headers={**CHINESE, "Referer": came_from})
    assert '<a href="/my-record-access">返回上一页</a>' in page.get_data(as_text=True)
    # Another site's page is not offered as the way back.
    elsewhere = client.get(f"/reports/{someone_elses_report.id}", headers={"Referer": "https://evil.example/x"})
    assert "evil.example" not in elsewhere.get_data(as_text=True)


def test_staff_refused_a_record_get_their_own_words_and_a_detail_for_the_help_desk(
    client: FlaskClient, demo: DemoSeed, someone_elses_report: DiagnosticReport,
) -> None:
    sign_in(client, "pharmacist")
    page = client.get(f"/reports/{someone_elses_report.id}", headers=CHINESE).get_data(as_text=True)
    text = main_text(page)
    assert "您无权查看此内容" in text and "不在您的患者诊疗范围或您的角色权限之内" in text
    assert "供服务台参考的详细信息" in text
    detail = page.split('id="error-detail"', 1)[1].split("</details>", 1)[0]
    assert "DiagnosticReport" in detail  # the machine's words, kept out of the explanation


def test_a_clinician_refused_a_page_is_offered_emergency_access_in_chinese(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    # A role the page is not for says "not yours" too, in plain words.
    refused = client.get("/admin/users", headers=CHINESE)
    assert refused.status_code == 403
    text = main_text(refused.get_data(as_text=True))
    assert "您无权查看此内容" in text and "紧急访问" in text
    assert 'href="/emergency-access?next=' in refused.get_data(as_text=True)


def test_a_missing_page_says_so_in_either_language(client: FlaskClient, demo: DemoSeed) -> None:
    english = client.get("/no-such-page", headers=ENGLISH)
    assert english.status_code == 404
    text = main_text(english.get_data(as_text=True))
    assert "We could not find this page" in text and "requested URL" not in text
    chinese = client.get("/no-such-page", headers=CHINESE)
    text = main_text(chinese.get_data(as_text=True))
    assert "找不到此页面" in text and latin_words(text, allowed=set()) == [], text


def test_a_failure_on_our_side_says_so_without_the_machine_words(
    app: Flask, client: FlaskClient, demo: DemoSeed, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> str:
        raise RuntimeError("boom: connection string postgres://secret")

    monkeypatch.setitem(app.view_functions, "web.health", broken)
    for headers, heading, retry in ((ENGLISH, "Something went wrong on our side", "try again in a few minutes"),
                                    (CHINESE, "系统出现了问题", "请几分钟后再试")):
        failed = client.get("/healthz", headers={**headers, "Accept": "text/html"})
        assert failed.status_code == 500
        html = failed.get_data(as_text=True)
        assert heading in main_text(html) and retry in main_text(html)
        assert "boom" not in html and "internal error" not in html and "Traceback" not in html


def test_a_form_refused_for_another_reason_still_says_why(client: FlaskClient, demo: DemoSeed) -> None:
    """A stale form is not a record that is someone else's: its own message is shown."""
    client.get("/login")
    stale = client.post("/language", data={"locale": "zh_CN", "csrf_token": "forged"}, headers=ENGLISH)
    assert stale.status_code == 403
    text = main_text(stale.get_data(as_text=True))
    assert "This could not be done" in text and "the form has expired" in text
    assert "not yours to see" not in text
    chinese = client.post("/language", data={"locale": "zh_CN", "csrf_token": "forged"}, headers=CHINESE)
    text = main_text(chinese.get_data(as_text=True))
    assert "无法完成此操作" in text and "表单已过期或并非来自本网站；请刷新页面后重试" in text
    assert latin_words(text, allowed=set()) == [], text


# --- key pages in Chinese ------------------------------------------------------------------------------


def test_signing_in_wrongly_is_explained_in_chinese(client: FlaskClient, demo: DemoSeed) -> None:
    token = csrf_token_of(client.get("/login", headers=CHINESE).get_data(as_text=True))
    refused = client.post("/login", data={"username": "patient", "password": "wrong", "csrf_token": token},
                          headers=CHINESE)
    assert refused.status_code == 401
    text = main_text(refused.get_data(as_text=True))
    assert "用户名不存在、密码错误或尝试次数过多" in text and "登录" in text
    assert latin_words(text, allowed=set()) == [], text


def test_who_opened_my_record_reads_in_chinese_with_chinese_dates(
    as_role: Any, client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    make_care_world(db_session, demo)
    db_session.commit()
    grant = as_role("radiologist").post("/api/emergency-access", json={
        "patient_id": demo.patient.id, "reason": "unconscious in the emergency department"})
    assert grant.status_code == 201, grant.get_data(as_text=True)
    sign_in(client, "patient")
    text = main_text(client.get("/my-record-access", headers=CHINESE).get_data(as_text=True))
    assert "谁查看了我的病历" in text and "紧急访问" in text and "给出的理由" in text
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日 周. \d\d:\d\d", text), text  # Babel's Chinese date, not strftime
    allowed = set(re.findall(r"[A-Za-z]+", demo.users["radiologist"].practitioner.display_name))
    allowed |= set(re.findall(r"[A-Za-z]+", "unconscious in the emergency department"))
    allowed |= set(re.findall(r"[A-Za-z]+", demo.imaging_centre.name)) | {"UTC", "CET", "CEST", "GMT", "CST"}
    assert latin_words(text, allowed) == [], text


@pytest.mark.parametrize(("username", "path"), [
    ("patient", "/account/password"),
    ("clinician", "/emergency-access"),
    ("admin", "/admin/users"),
    ("admin", "/admin/users/new"),
    ("admin", "/admin/audit"),
    ("admin", "/admin/storage?preview=1"),
    ("admin", "/admin/emergency-access"),
    ("admin", "/admin/smart-apps"),
])
def test_core_pages_keep_none_of_their_english_in_chinese(
    client: FlaskClient, demo: DemoSeed, username: str, path: str,
) -> None:
    sign_in(client, username)
    page = client.get(path, headers=CHINESE)
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    html = page.get_data(as_text=True)
    assert '<html lang="zh-CN">' in html
    assert catalog_english_in(main_text(html)) == []


def test_an_account_page_in_chinese_names_roles_and_kinds_as_words(
    client: FlaskClient, demo: DemoSeed,
) -> None:
    sign_in(client, "admin")
    user = demo.users["radiologist"]
    html = client.get(f"/admin/users/{user.id}", headers=CHINESE).get_data(as_text=True)
    text = main_text(html)
    assert "放射科医生" in text and "影像中心" in text and "姓名，以及所属影像中心" in text
    assert catalog_english_in(text) == []
    assert "imaging_centre)" not in text and "radiologist</dd>" not in html


def test_an_administrators_message_is_one_sentence_in_chinese(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "admin")
    choose_language(client, "zh_CN", "/admin/users")
    target = demo.users["pharmacist"]
    page = client.get(f"/admin/users/{target.id}").get_data(as_text=True)
    saved = client.post(f"/admin/users/{target.id}", data={
        "csrf_token": csrf_token_of(page), "action": "role", "role": "pharmacist",
        "organization_id": str(demo.imaging_centre.id)})
    assert saved.status_code == 422
    text = main_text(saved.get_data(as_text=True))
    assert "Riverside Imaging Centre 是影像中心；药师账号应属于药房" in text


def test_too_many_sign_in_attempts_say_how_long_to_wait_in_chinese(
    database_url: str, tmp_path: Any, db_session: Session,
) -> None:
    limited = make_test_app(database_url, tmp_path, LOGIN_ATTEMPTS_PER_MINUTE=1)
    client = limited.test_client()
    token = csrf_token_of(client.get("/login", headers=CHINESE).get_data(as_text=True))
    form = {"username": "nobody", "password": "x", "csrf_token": token}
    # One attempt a minute: the second is refused (the third, if a new minute began between them).
    answers = [client.post("/login", data=form, headers=CHINESE) for _ in range(3)]
    assert answers[0].status_code == 401
    throttled = next(answer for answer in answers if answer.status_code == 429)
    text = main_text(throttled.get_data(as_text=True))
    assert re.search(r"尝试次数过多。请等待 \d+ 秒后再试。", text), text
    assert latin_words(text, allowed=set()) == [], text
    api_answers = [limited.test_client().post("/api/auth/token", json={"username": "nobody", "password": "x"},
                                              headers=CHINESE) for _ in range(2)]
    api = next(answer for answer in api_answers if answer.status_code == 429)
    assert "too many attempts" in api.get_json()["detail"]  # machines read English
