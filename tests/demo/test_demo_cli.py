"""`hospital demo` where it must stop or fix things before the loop: a DICOM port already taken,
a database behind the current schema. (Its whole run, quiet and verbose, is in tests/test_cli.py.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from demo.cli import bring_schema_to_head
from hospital import migrate
from tests.test_cli import embedded_env, hospital


def test_a_taken_dicom_port_stops_the_demo_before_anything_is_sent(tmp_path: Path) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        result = hospital("demo", "--no-serve", "--dicom-port", str(port), env=embedded_env(tmp_path), timeout=120)
        stranger.setblocking(False)
        with pytest.raises(BlockingIOError):
            stranger.accept()  # nobody connected: no echo, no study
    assert result.returncode != 0
    assert f"Error: cannot listen on DICOM port {port} on 127.0.0.1" in result.stderr
    assert "--dicom-port" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sent over DICOM" not in result.stdout


def test_an_embedded_database_behind_the_schema_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hospital.db'}"
    migrate.upgrade(url, "0001")
    assert not migrate.is_at_head(url)
    bring_schema_to_head(url)
    assert migrate.is_at_head(url)


def test_an_unmigrated_database_that_is_not_embedded_gets_one_line_naming_the_command(
        tmp_path: Path, empty_postgres_url: str) -> None:
    env = {**embedded_env(tmp_path), "DATABASE_URL": empty_postgres_url, "SECRET_KEY": "test-secret"}
    result = hospital("demo", "--no-serve", "--dicom-port", "1", env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: the database {make_url(empty_postgres_url).render_as_string(hide_password=True)} is not at the "
        "current schema; run `hospital db upgrade` first"
    ]
    assert not migrate.is_at_head(empty_postgres_url)  # left for its owner to migrate
