"""Upgrades without downtime (issue #21): processes register the schema their code was written for,
and `hospital db upgrade` refuses a destructive (contract) migration while older code still runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis
from rq import Queue, Worker

from demo.closed_loop import free_port
from hospital import migrate
from hospital.cli import cli
from hospital.process_registry import (
    Heartbeat,
    code_schema_head,
    register_process,
    running_processes,
    worker_name,
)

CONTRACT = "9001"


@pytest.fixture()
def redis_conn(redis_url: str) -> Iterator[Redis]:
    conn = Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture()
def migrations_with_a_contract_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This code's migrations plus one destructive step after the head, as the next release would ship."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / f"{CONTRACT}_drop_something.py").write_text(f'''"""contract: drop what the old code read"""
revision = "{CONTRACT}"
down_revision = "{code_schema_head()}"
branch_labels = None
depends_on = None
destructive = True


def upgrade() -> None:
    from alembic import op
    op.create_table("contract_ran", __import__("sqlalchemy").Column("id", __import__("sqlalchemy").Integer,
                    primary_key=True))


def downgrade() -> None:
    from alembic import op
    op.drop_table("contract_ran")
''')
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", copy)
    return copy


def start_worker(conn: Redis, name: str) -> Worker:
    """Register an RQ worker in Redis as a running one does (birth, heartbeat), without working."""
    worker = Worker([Queue("default", connection=conn)], connection=conn, name=name)
    worker.register_birth()
    return worker


def upgrade_cli(tmp_path: Path, database_url: str, redis_url: str | None, *args: str) -> tuple[int, str]:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url or "", "HOSPITAL_INSTANCE_DIR": str(tmp_path / "i")}
    result = CliRunner().invoke(cli, ["db", "upgrade", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def schema_revision(database_url: str) -> str | None:
    return migrate._current_revision(database_url)


def test_worker_names_and_heartbeats_carry_the_schema_head(redis_conn: Redis) -> None:
    head = code_schema_head()
    start_worker(redis_conn, worker_name())
    start_worker(redis_conn, "started-by-hand")
    heartbeat = Heartbeat(redis_conn, "dicom", ttl_seconds=30)
    heartbeat.start()
    try:
        found = {(p.kind, p.schema_head) for p in running_processes(redis_conn)}
        assert found == {("worker", head), ("worker", None), ("dicom", head)}
        assert 0 < redis_conn.ttl(heartbeat.key) <= 30  # a crashed process stops blocking upgrades
    finally:
        heartbeat.stop()
    assert ("dicom", head) not in {(p.kind, p.schema_head) for p in running_processes(redis_conn)}


def test_only_migrations_marked_destructive_count(tmp_path: Path, migrations_with_a_contract_step: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url, code_schema_head())
    steps = migrate.pending_destructive_steps(url)
    assert [step.revision for step in steps] == [CONTRACT]
    assert "contract" in steps[0].doc
    assert migrate.pending_destructive_steps(url, code_schema_head()) == []
    # From empty, the existing (expand-only) migrations are not destructive.
    assert [s.revision for s in migrate.pending_destructive_steps(f"sqlite:///{tmp_path / 'e.db'}")] == [CONTRACT]


def test_db_upgrade_refuses_a_contract_step_while_old_workers_or_web_processes_run(
        tmp_path: Path, redis_url: str, redis_conn: Redis, migrations_with_a_contract_step: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url, code_schema_head())
    old_worker = start_worker(redis_conn, worker_name(code_schema_head()))  # this release: does not know 9001
    code, output = upgrade_cli(tmp_path, url, redis_url)
    assert code == 1
    assert f"migration {CONTRACT} is destructive" in output and old_worker.name in output
    assert schema_revision(url) == code_schema_head()

    # The rolling restart replaces the worker; a web process of the old release still beats.
    old_worker.register_death()
    start_worker(redis_conn, worker_name(CONTRACT))
    register_process(redis_conn, "web", schema_head=code_schema_head())
    code, output = upgrade_cli(tmp_path, url, redis_url)
    assert code == 1 and "web hospital:process:web:" in output
    redis_conn.delete(*redis_conn.keys("hospital:process:*"))

    # A worker whose version cannot be told counts as old.
    unknown = start_worker(redis_conn, "worker-started-by-hand")
    code, output = upgrade_cli(tmp_path, url, redis_url)
    assert code == 1 and "worker-started-by-hand (code for schema unknown)" in output
    unknown.register_death()

    code, output = upgrade_cli(tmp_path, url, redis_url)
    assert code == 0, output
    assert schema_revision(url) == CONTRACT


def test_db_upgrade_force_and_no_redis(tmp_path: Path, redis_url: str, redis_conn: Redis,
                                       migrations_with_a_contract_step: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url, code_schema_head())
    code, output = upgrade_cli(tmp_path, url, None)
    assert code == 1 and "REDIS_URL is not set" in output
    start_worker(redis_conn, worker_name(code_schema_head()))
    code, output = upgrade_cli(tmp_path, url, redis_url, "--force")
    assert code == 0, output
    assert schema_revision(url) == CONTRACT


def test_expand_steps_run_while_old_code_runs(tmp_path: Path, redis_url: str, redis_conn: Redis) -> None:
    """Nothing in today's migrations is destructive: an old worker does not hold up an expand step."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url, "0023")
    start_worker(redis_conn, worker_name("0023"))
    code, output = upgrade_cli(tmp_path, url, redis_url)
    assert code == 0, output
    assert schema_revision(url) == code_schema_head()


@pytest.mark.e2e
def test_serve_and_dicom_processes_register_while_they_run(tmp_path: Path, redis_url: str, redis_conn: Redis) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DICOM_STORAGE_DIR")}
    env.update(DATABASE_URL=url, REDIS_URL=redis_url, HOSPITAL_INSTANCE_DIR=str(tmp_path / "i"))
    commands = {"web": ["serve", "--port", str(free_port())], "dicom": ["dicom", "--port", str(free_port())]}
    processes = {kind: subprocess.Popen([sys.executable, "-m", "hospital.cli", *args], env=env)
                 for kind, args in commands.items()}
    try:
        deadline = time.monotonic() + 60
        while {p.kind for p in running_processes(redis_conn)} != {"web", "dicom"}:
            assert all(p.poll() is None for p in processes.values()), "a process exited"
            assert time.monotonic() < deadline, running_processes(redis_conn)
            time.sleep(0.3)
        assert {p.schema_head for p in running_processes(redis_conn)} == {code_schema_head()}
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGINT)
        for process in processes.values():
            process.wait(timeout=30)
    assert running_processes(redis_conn) == []  # a clean stop deregisters
