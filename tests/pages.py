"""Helpers for tests that use the pages as a browser does (a Flask test client with cookies)."""

from __future__ import annotations

import re
from html import unescape

from flask.testing import FlaskClient

from hospital import i18n_catalogs
from hospital.seed import DEMO_PASSWORD


def csrf_token_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def sign_in(client: FlaskClient, username: str, password: str = DEMO_PASSWORD) -> None:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)


def choose_language(client: FlaskClient, locale: str, next_path: str = "/") -> None:
    """Press the language switch every page shows."""
    token = csrf_token_of(client.get(next_path).get_data(as_text=True))
    response = client.post("/language", data={"locale": locale, "next": next_path, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)


# Reading a page in a language ---------------------------------------------------------------------

CHINESE = {"Accept-Language": "zh-CN,zh;q=0.9"}
ENGLISH = {"Accept-Language": "en-GB,en;q=0.9"}


def main_text(html: str) -> str:
    """What the page's main region says, as a reader sees it (no tags, entities resolved)."""
    found = re.search(r"<main\b[^>]*>(.*?)</main>", html, flags=re.S)
    assert found, "the page has no main region"
    main = found.group(1)
    main = re.sub(r"<(script|style)\b.*?</\1>", " ", main, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", main)).split())


def catalog_english_in(text: str, stage: str = "hospital") -> list[str]:
    """The stage's English sentences and phrases (three words or more) that `text` still holds."""
    catalog = i18n_catalogs.extract(i18n_catalogs.ROOT / stage)
    phrases = {message.id if isinstance(message.id, str) else message.id[0] for message in catalog if message.id}
    found = []
    for phrase in phrases:
        # The longest piece without a value, markup or code (a code sample reads the same in Chinese).
        prose = re.sub(r"<code>.*?</code>", "%(code)s", phrase)
        fixed = max(re.split(r"%\(\w+\)[sd]|<[^>]+>", prose), key=len).strip(" .,:;()")
        if len(fixed.split()) >= 3 and fixed in text:
            found.append(fixed)
    return found


def latin_words(text: str, allowed: set[str]) -> list[str]:
    return [word for word in re.findall(r"[A-Za-z]{2,}", text) if word not in allowed]
