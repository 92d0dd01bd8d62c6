"""Helpers for tests that use the pages as a browser does (a Flask test client with cookies)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

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
