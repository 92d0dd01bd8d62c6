"""The short-lived cache of live bearer tokens (hospital/auth_cache.py): no query per request for a
token seen a moment ago, and nothing it grants outlives a change this process made, nor, for a
change made elsewhere, `AUTH_CACHE_SECONDS`."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, select, text, update

from hospital import auth_cache
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.models import ApiToken, User
from hospital.seed import DEMO_PASSWORD, seed_demo
from tests.conftest import make_test_app
from tests.plans import statements_sent


def app_of_its_own(url: str, tmp_path: Path, seconds: int) -> Flask:
    """An app on a database of its own whose changes really commit: the cache is filled and
    emptied on commits, and "another process" here is a second engine."""
    from hospital.migrate import upgrade

    upgrade(url)
    app = make_test_app(url, tmp_path, AUTH_CACHE_SECONDS=seconds)
    with app.app_context(), get_db(app).transaction() as session:
        seed_demo(session, app)
    return app


@pytest.fixture()
def committed_app(empty_postgres_url: str, tmp_path: Path) -> Flask:
    return app_of_its_own(empty_postgres_url, tmp_path, 30)


def token_for(app: Flask, username: str) -> dict[str, str]:
    response = app.test_client().post("/api/auth/token", json={"username": username, "password": DEMO_PASSWORD})
    assert response.status_code == 201, response.get_data(as_text=True)
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def token_queries(app: Flask, call: Any) -> tuple[Any, int]:
    with app.app_context(), statements_sent(get_db(app).engine, {"api_token"}) as sent:
        result = call()
    return result, len(sent)


def test_a_token_seen_a_moment_ago_needs_no_query_and_the_request_sees_the_same_account(committed_app: Flask) -> None:
    client, headers = committed_app.test_client(), token_for(committed_app, "clinician")
    first, queries = token_queries(committed_app, lambda: client.get("/api/me", headers=headers))
    assert first.status_code == 200 and queries == 1
    again, queries = token_queries(committed_app, lambda: client.get("/api/me", headers=headers))
    assert again.status_code == 200 and queries == 0
    assert again.get_json() == first.get_json()
    # The account rebuilt from the cache is a real persistent object: a change to it is saved.
    with committed_app.test_request_context("/api/me", headers=headers):
        from hospital.auth import current_user
        from hospital.db import request_session

        user = current_user()
        assert user in request_session() and user.organization is not None  # lazy loads work
        # The password hash is not kept in the cache; read, it is loaded from the database.
        digest = hashlib.sha256(headers["Authorization"].split()[1].encode()).hexdigest()
        cached = committed_app.extensions["hospital.bearer_cache"].get(digest, utcnow())
        assert cached is not None and "password_hash" not in cached.user_columns
        assert user.password_hash.startswith("scrypt:")
        user.locale = "zh_CN"
        request_session().commit()
    with committed_app.app_context(), get_db(committed_app).transaction() as session:
        assert session.scalar(select(User.locale).where(User.username == "clinician")) == "zh_CN"


def test_a_revocation_or_deactivation_in_this_process_ends_the_cached_token_at_once(committed_app: Flask) -> None:
    client = committed_app.test_client()
    headers = token_for(committed_app, "patient")
    assert client.get("/api/me", headers=headers).status_code == 200  # cached now
    assert client.post("/api/auth/revoke", headers=headers).status_code in (200, 204)
    assert client.get("/api/me", headers=headers).status_code == 401

    headers = token_for(committed_app, "clinician")
    assert client.get("/api/me", headers=headers).status_code == 200
    with committed_app.app_context(), get_db(committed_app).transaction() as session:
        session.scalar(select(User).where(User.username == "clinician")).active = False  # type: ignore[union-attr]
    assert client.get("/api/me", headers=headers).status_code == 401

    headers = token_for(committed_app, "radiologist")
    assert client.get("/api/me", headers=headers).status_code == 200
    with committed_app.app_context(), get_db(committed_app).transaction() as session:
        # A bulk revocation (every token of the account) bypasses the flush: seen all the same.
        session.execute(update(ApiToken).where(ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
    assert client.get("/api/me", headers=headers).status_code == 401


def test_signing_in_does_not_empty_the_cache(committed_app: Flask) -> None:
    # Thousands of staff sign in through the same processes: a new token (and a failure count
    # reset to the 0 it already was) withdraws nothing, so other callers' entries stay.
    client, headers = committed_app.test_client(), token_for(committed_app, "clinician")
    assert client.get("/api/me", headers=headers).status_code == 200
    generation = auth_cache.GENERATION.value
    token_for(committed_app, "patient")
    token_for(committed_app, "radiologist")
    assert auth_cache.GENERATION.value == generation
    response, queries = token_queries(committed_app, lambda: client.get("/api/me", headers=headers))
    assert response.status_code == 200 and queries == 0


def test_a_change_made_by_another_process_is_seen_once_the_entry_ends(committed_app: Flask, monkeypatch: Any) -> None:
    client, headers = committed_app.test_client(), token_for(committed_app, "patient")
    assert client.get("/api/me", headers=headers).status_code == 200
    other = create_engine(committed_app.config["DATABASE_URL"])
    with other.begin() as conn:  # another process: this one hears nothing of it
        conn.execute(text("UPDATE user_account SET active = false WHERE username = 'patient'"))
    other.dispose()
    assert client.get("/api/me", headers=headers).status_code == 200  # within AUTH_CACHE_SECONDS
    later = utcnow() + timedelta(seconds=31)
    monkeypatch.setattr("hospital.auth.utcnow", lambda: later)
    assert client.get("/api/me", headers=headers).status_code == 401


def test_an_entry_ends_when_its_token_expires(committed_app: Flask, monkeypatch: Any) -> None:
    client, headers = committed_app.test_client(), token_for(committed_app, "patient")
    with committed_app.app_context(), get_db(committed_app).transaction() as session:
        token = session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).first()
        assert token is not None
        token.expires_at = utcnow() + timedelta(seconds=10)
    assert client.get("/api/me", headers=headers).status_code == 200  # cached for 10 s, not 30
    later = utcnow() + timedelta(seconds=11)
    monkeypatch.setattr("hospital.auth.utcnow", lambda: later)
    assert client.get("/api/me", headers=headers).status_code == 401


def test_a_change_committed_while_a_token_is_looked_up_keeps_the_answer_out_of_the_cache(committed_app: Flask) -> None:
    digest = hashlib.sha256(token_for(committed_app, "patient")["Authorization"].split()[1].encode()).hexdigest()
    generation = auth_cache.GENERATION.value  # read before the lookup, as hospital.auth does
    with committed_app.app_context(), get_db(committed_app).transaction() as session:
        token = session.scalars(select(ApiToken).where(ApiToken.token_sha256 == digest)).one()
        user = session.get(User, token.user_id)
        assert user is not None
        cache = committed_app.extensions["hospital.bearer_cache"]
        cache.put(digest, generation, utcnow(), token, user, None)
        assert cache.get(digest, utcnow()) is not None
        auth_cache.GENERATION.bump()  # a revocation committed between the lookup and the put
        cache.put(digest, generation, utcnow(), token, user, None)
        assert cache.get(digest, utcnow()) is None


def test_zero_seconds_turns_the_cache_off(empty_postgres_url: str, tmp_path: Path) -> None:
    app = app_of_its_own(empty_postgres_url, tmp_path, 0)
    client, headers = app.test_client(), token_for(app, "patient")
    for _ in range(2):
        response, queries = token_queries(app, lambda: client.get("/api/me", headers=headers))
        assert response.status_code == 200 and queries == 1
