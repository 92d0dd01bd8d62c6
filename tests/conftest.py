"""Test fixtures: a real PostgreSQL database per test run (migrated by Alembic), a rollback per
test, a real Redis, the app and clients per role.

`TEST_DATABASE_ADMIN_URL` (default: the local server as `postgres`) is where the per-run database
is created; `TEST_REDIS_URL` (default: local Redis, db 15) is flushed by the tests that use it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hospital.app import create_app
from hospital.db import Base, get_db
from hospital.migrate import upgrade
from hospital.seed import DEMO_PASSWORD, DemoSeed, seed_demo

ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated to head, dropped afterwards."""
    name = f"hospital_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture()
def empty_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database nobody has migrated, dropped afterwards."""
    name = f"hospital_empty_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_test_app(database_url: str, tmp_dir: Path, **overrides: Any) -> Flask:
    config = {
        "DATABASE_URL": database_url,
        "REDIS_URL": None,
        "SECRET_KEY": "test-secret",
        "TESTING": True,
        "INSTANCE_DIR": tmp_dir,
        "DICOM_STORAGE_DIR": tmp_dir / "dicom",
        "STUDY_QUIET_SECONDS": 0.5,
        # The suite signs in hundreds of times from one address; the limit has its own test.
        "LOGIN_ATTEMPTS_PER_MINUTE": 100_000,
        # Package checks run in many tests; the held-out evaluation at its full size has its own.
        "AI_PACKAGE_HELD_OUT_CASES": 3,
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture(scope="session")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_test_app(database_url, tmp_path_factory.mktemp("instance"))


@pytest.fixture()
def db_session(app: Flask) -> Iterator[Session]:
    """Every session the app opens during the test joins one transaction rolled back at the end."""
    db = get_db(app)
    connection = db.engine.connect()
    outer = connection.begin()
    original = db.session_factory
    db.session_factory = sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    session = db.session_factory()
    with app.app_context():
        yield session
    session.close()
    db.session_factory = original
    outer.rollback()
    connection.close()


@pytest.fixture()
def demo(db_session: Session, app: Flask) -> DemoSeed:
    """Demo organisations, users of every role, a patient, schedules, catalog and model."""
    seeded = seed_demo(db_session, app)
    db_session.commit()
    return seeded


@pytest.fixture()
def client(app: Flask, db_session: Session) -> FlaskClient:
    return app.test_client()


class ApiClient:
    """A test client that sends one user's bearer token with every request."""

    def __init__(self, client: FlaskClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method: str) -> Any:
        def call(url: str, **kwargs: Any) -> Any:
            headers = {**self.headers, **kwargs.pop("headers", {})}
            return getattr(self.client, method)(url, headers=headers, **kwargs)

        return call


def login_api(client: FlaskClient, username: str, password: str = DEMO_PASSWORD) -> ApiClient:
    response = client.post("/api/auth/token", json={"username": username, "password": password})
    assert response.status_code == 201, response.get_data(as_text=True)
    return ApiClient(client, response.get_json()["access_token"])


@pytest.fixture()
def as_role(client: FlaskClient, demo: DemoSeed) -> Any:
    """`as_role("clinician")` -> an ApiClient signed in as that demo user."""
    cache: dict[str, ApiClient] = {}

    def get(username: str) -> ApiClient:
        if username not in cache:
            cache[username] = login_api(client, username)
        return cache[username]

    return get


@pytest.fixture()
def live_database(database_url: str) -> Iterator[str]:
    """The run's database for tests whose work must really commit (servers in other threads or
    processes); every table is emptied afterwards."""
    yield database_url
    engine = create_engine(database_url)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        # The audit trail refuses TRUNCATE; a superuser can switch its triggers off (what
        # `hospital audit verify` and the README's security section are about). Test data only.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture()
def redis_url() -> Iterator[str]:
    conn = Redis.from_url(REDIS_URL)
    conn.flushdb()
    yield REDIS_URL
    conn.flushdb()
    conn.close()
