"""/metrics under gunicorn as deployed (deploy/gunicorn.conf.py): several worker processes, one
figure (prometheus-client multiprocess mode), and JSON log lines with the request id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo.closed_loop import free_port
from hospital.migrate import upgrade

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-token-for-gunicorn-0123456789"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def served(base: str) -> float:
    """/healthz answers counted by all workers together, from one scrape."""
    status, body = get(base + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return sum(s.value for family in text_string_to_metric_families(body) for s in family.samples
               if s.name == "hospital_http_requests_total" and s.labels.get("route") == "/healthz")


@pytest.mark.skipif(shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None,
                    reason="gunicorn (the 'production' extra) is not installed")
def test_metrics_add_up_every_gunicorn_worker_and_logs_are_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hospital.db'}"
    upgrade(url)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "HOSPITAL_INSTANCE_DIR": str(tmp_path), "SECRET_KEY": "test-secret",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "METRICS_TOKEN": TOKEN, "WEB_BIND": f"127.0.0.1:{port}",
           "WEB_WORKERS": "3", "WEB_THREADS": "1", "TRUSTED_PROXIES": "0", "LOG_LEVEL": "INFO"}
    env.pop("REDIS_URL", None)
    env.pop("LOG_FORMAT", None)  # the config file sets json
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    server = subprocess.Popen([gunicorn, "-c", "deploy/gunicorn.conf.py", "hospital.wsgi:app"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        before = served(base)
        for _ in range(60):
            assert get(base + "/healthz")[0] == 200
        status, _ = get(base + "/api/me", {"X-Request-ID": "probe-request-0001"})
        assert status == 401
        assert get(base + "/metrics")[0] == 401
        assert served(base) - before == 60
        writers = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("*.db")}
        assert len(writers) >= 1, list(metrics_dir.iterdir())
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "probe-request-0001" and line["logger"].startswith("hospital")
               for line in lines), output[-3000:]
