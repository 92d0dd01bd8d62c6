"""The `hospital` command as a newcomer runs it: `db upgrade` then `demo`, and `serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from demo.closed_loop import free_port

pytestmark = pytest.mark.e2e


def hospital(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hospital.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DICOM_STORAGE_DIR")}
    env["HOSPITAL_INSTANCE_DIR"] = str(tmp_path / "instance")
    return env


# Lines written for every DICOM instance: pynetdicom's, on both ends, and the archive's.
PER_INSTANCE_LINES = ("Sending Store Request", "Received Store Request", "imaging_orders.archive.ingest: stored")


def test_demo_on_the_embedded_default_migrates_it_and_prints_a_line_per_step_and_the_closed_loop(
        tmp_path: Path) -> None:
    env = embedded_env(tmp_path)  # no `hospital db upgrade` first: the demo brings the embedded database up
    result = hospital("demo", "--no-serve", "--dicom-port", str(free_port()), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded database" in result.stdout and "migrated to the current schema" in result.stdout
    assert "24 CT images sent over DICOM C-STORE" in result.stdout
    assert "Closed loop complete" in result.stdout
    assert "DiagnosticReport/1 (final)" in result.stdout
    assert "Invoice/1: total 243.50 EUR (24350 minor units), balanced" in result.stdout
    assert (tmp_path / "instance" / "hospital.db").exists()
    output = result.stdout + result.stderr
    assert not [line for line in PER_INSTANCE_LINES if line in output], output[-3000:]
    assert len(result.stdout.splitlines()) < 40, result.stdout


def test_demo_verbose_logs_every_dicom_instance(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    result = hospital("demo", "--no-serve", "--verbose", "--dicom-port", str(free_port()), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Closed loop complete" in result.stdout
    for line in PER_INSTANCE_LINES:
        assert result.stderr.count(line) >= 24, line


def test_serve_answers_http(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    assert hospital("db", "upgrade", env=env).returncode == 0
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hospital.cli", "serve", "--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None, "hospital serve exited"
                assert time.monotonic() < deadline, "hospital serve did not answer"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=20)
