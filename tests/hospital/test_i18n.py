"""The reader's language: chosen per user (saved choice, then cookie, then Accept-Language), switched
on every page, and used for words, dates and money."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from hospital import i18n
from hospital.models import User, person_name
from hospital.seed import DemoSeed
from tests.pages import choose_language, csrf_token_of, sign_in


@pytest.mark.parametrize(("tag", "expected"), [
    ("zh-CN", "zh_CN"), ("zh", "zh_CN"), ("zh-Hans", "zh_CN"), ("zh_Hans_CN", "zh_CN"), ("ZH-cn", "zh_CN"),
    ("zh-TW", None), ("zh-Hant-HK", None), ("en-GB", "en"), ("en", "en"), ("fr", None), ("", None), (None, None),
])
def test_language_tags_map_to_the_catalogs_we_have(tag: str | None, expected: str | None) -> None:
    assert i18n.normalise(tag) == expected


def test_the_browser_language_chooses_for_someone_not_signed_in(client: FlaskClient, demo: DemoSeed) -> None:
    chinese = client.get("/login", headers={"Accept-Language": "fr;q=1, zh-CN;q=0.8, en;q=0.5"}).get_data(as_text=True)
    assert '<html lang="zh-CN">' in chinese and "跳到正文" in chinese
    english = client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in english and "Skip to content" in english and "跳到正文" not in english
    # Traditional Chinese is not Simplified: English rather than a script the reader may not read.
    assert '<html lang="en">' in client.get("/login", headers={"Accept-Language": "zh-TW"}).get_data(as_text=True)


def test_the_switch_is_saved_on_the_account_and_beats_the_browser(
    client: FlaskClient, demo: DemoSeed, db_session: Session,
) -> None:
    sign_in(client, "patient")
    page = client.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'name="locale" value="zh_CN"' in page and "退出登录" not in page
    choose_language(client, "zh_CN", "/")
    db_session.expire_all()
    patient_user = db_session.get(User, demo.users["patient"].id)
    assert patient_user is not None and patient_user.locale == "zh_CN"
    page = client.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="zh-CN">' in page and "退出登录" in page and "患者" in page
    # The person's name, not their username, beside the menu.
    assert "Alex Rivera" in page
    # Another browser of the same person (no cookie) also reads Chinese: it is on the account.
    other = client.application.test_client()
    sign_in(other, "patient")
    assert "退出登录" in other.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)


def test_the_switch_works_before_signing_in_and_returns_to_the_page(client: FlaskClient, demo: DemoSeed) -> None:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post("/language", data={"locale": "zh_CN", "next": "/login?next=/referrals", "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/referrals"
    assert "跳到正文" in client.get("/login", headers={"Accept-Language": "en"}).get_data(as_text=True)
    # Only this site's pages: a crafted next goes home instead.
    response = client.post("/language", data={"locale": "en", "next": "//evil.example/", "csrf_token": token})
    assert response.headers["Location"] == "/"


def test_an_unknown_language_is_refused_clearly(client: FlaskClient, demo: DemoSeed) -> None:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post("/language", data={"locale": "klingon", "csrf_token": token})
    assert response.status_code in (400, 422)
    assert "Traceback" not in response.get_data(as_text=True)


def test_names_are_written_the_way_their_script_writes_them() -> None:
    assert person_name("王", "小明") == "王小明"
    assert person_name("欧阳", "娜娜") == "欧阳娜娜"
    assert person_name("Rivera", "Alex") == "Alex Rivera"


def test_money_dates_and_numbers_follow_the_reader(app: Flask) -> None:
    moment = datetime(2026, 12, 4, 1, 30, tzinfo=UTC)
    with app.test_request_context("/", headers={"Accept-Language": "zh-CN"}):
        assert i18n.format_money(128000, "CNY") == "¥1,280.00"
        assert i18n.local_date(moment, "Asia/Shanghai") == "2026年12月4日"
        assert i18n.local_datetime(moment, "Asia/Shanghai").startswith("2026年12月4日 周五 09:30")
        assert i18n.format_number(1234.5, 1) == "1,234.5"
    with app.test_request_context("/", headers={"Accept-Language": "en"}):
        assert i18n.format_money(24350, "EUR") == "€243.50"
        assert i18n.format_money(128000, "CNY") == "CN¥1,280.00"
        assert i18n.local_datetime(moment, "Europe/Berlin") == "Fri 4 Dec 2026 02:30 CET"
    with app.test_request_context("/", headers={"Accept-Language": "de-DE"}):
        assert i18n.html_lang() == "en"  # only the languages we translate to


def test_work_for_another_person_speaks_their_language(app: Flask) -> None:
    reader = User(username="x", password_hash="-", locale="zh_CN")
    with app.test_request_context("/", headers={"Accept-Language": "en"}):
        assert str(i18n.status_word("balanced")) == "Paid"
        with i18n.for_user(reader):
            assert str(i18n.status_word("balanced")) == "已支付"
        assert str(i18n.status_word("balanced")) == "Paid"
    with app.app_context(), i18n.for_user(reader):
        assert i18n.role_label("radiologist") == "放射科医生"


def test_the_pages_scripts_get_their_words_in_the_page_language(client: FlaskClient, demo: DemoSeed, app: Flask) -> None:
    # (The client's fixtures hold one app context open around these requests: choose afresh in each,
    # as every real request does.)
    with app.test_request_context("/", headers={"Accept-Language": "en"}):
        i18n.refresh()
        words = i18n.js_messages()
        assert words["images"] == ["%(num)d image", "%(num)d images"]
        assert words["retry_analysis"] == "Retry analysis"
    with app.test_request_context("/", headers={"Accept-Language": "zh-CN"}):
        i18n.refresh()
        words = i18n.js_messages()
        assert words["images"] == ["%(num)d 幅图像", "%(num)d 幅图像"]
        assert words["retry_analysis"] == "重新分析"
    page = client.get("/login", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    sent = page.split('<script type="application/json" id="page-text">')[1].split("</script>")[0]
    assert json.loads(sent)["show_them"] == "显示"
