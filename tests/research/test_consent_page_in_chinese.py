"""Issue 17: a patient reads and makes their research choice in Chinese: the explanation, the
choice, the date it was made (Babel's, in their zone) and the thanks."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from hospital.seed import DemoSeed
from tests.pages import catalog_english_in, choose_language, csrf_token_of, latin_words, main_text, sign_in


def test_the_research_choice_reads_and_answers_in_chinese(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "patient")
    choose_language(client, "zh_CN", "/research/consent")
    page = client.get("/research/consent").get_data(as_text=True)
    text = main_text(page)
    assert "影像用于科研" in text and "您尚未做出选择" in text and "保存我的选择" in text
    assert latin_words(text, allowed=set()) == [], text
    chosen = client.post("/research/consent", follow_redirects=True,
                         data={"decision": "permit", "csrf_token": csrf_token_of(page)})
    text = main_text(chosen.get_data(as_text=True))
    assert "谢谢您。您的影像现在可在去除姓名等个人信息后用于研究。" in text
    assert re.search(r"您于 \d{4}年\d{1,2}月\d{1,2}日 选择了同意", text), text
    assert catalog_english_in(text, "research") == [] and latin_words(text, allowed=set()) == []


def test_the_research_page_in_english_writes_the_date_in_words(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "patient")
    page = client.get("/research/consent", headers={"Accept-Language": "en"}).get_data(as_text=True)
    chosen = client.post("/research/consent", follow_redirects=True, headers={"Accept-Language": "en"},
                         data={"decision": "deny", "csrf_token": csrf_token_of(page)})
    text = main_text(chosen.get_data(as_text=True))
    assert re.search(r"You said no on \w+ \d{1,2}, \d{4}|You said no on \d{1,2} \w+ \d{4}", text), text
    assert "影像" not in text
