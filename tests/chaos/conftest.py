"""Fixtures for chaos tests: our own Redis and PostgreSQL (restartable), the run's database, a
worker launcher that cleans up after itself."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hospital.migrate import upgrade
from tests.chaos.processes import (
    OwnPostgres,
    OwnRedis,
    hospital_env,
    kill_hard,
    own_postgres_unavailable,
    start_worker,
)

# Short enough that a dead worker's job is re-sent within the test, long enough for the analysis.
JOB_TIMEOUT_SECONDS = 15
SWEEP_ENV = {"JOB_TIMEOUT_SECONDS": str(JOB_TIMEOUT_SECONDS), "JOB_SWEEP_SECONDS": "1", "JOB_SWEEP_AFTER_SECONDS": "1"}


@pytest.fixture()
def own_redis() -> Iterator[OwnRedis]:
    redis = OwnRedis()
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture()
def own_postgres() -> Iterator[OwnPostgres]:
    """A migrated PostgreSQL cluster of the test's own, so it can be stopped without touching the
    shared server every other test run on this machine uses."""
    reason = own_postgres_unavailable()
    if reason:
        pytest.skip(reason)
    postgres = OwnPostgres()
    try:
        postgres.init()
        postgres.start()
        upgrade(postgres.url)
        yield postgres
    finally:
        postgres.destroy()


@pytest.fixture()
def worker_env(live_database: str, own_redis: OwnRedis, tmp_path: Path) -> dict[str, str]:
    return hospital_env(live_database, own_redis.url, tmp_path / "dicom", tmp_path, **SWEEP_ENV)


@pytest.fixture()
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """`workers("ai")` starts a `hospital worker` (all queues when none given); all stop at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*queues: str) -> subprocess.Popen[bytes]:
        process = start_worker(worker_env, *queues, log=tmp_path / "workers.log")
        started.append(process)
        return process

    yield start
    for process in started:
        kill_hard(process)  # throwaway processes on a throwaway Redis: no need to wait for a warm stop
