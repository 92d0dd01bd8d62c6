"""The previous release's code runs against the new schema (issue #21, upgrades without downtime).

During a rolling upgrade the schema goes to head first (`hospital db upgrade`, expand steps only),
and for a while the old release's workers, web and DICOM processes keep running on it. This test
takes the previous release out of git (the first-parent commit before the newest migration arrived,
or `HOSPITAL_PREVIOUS_RELEASE`), migrates an empty PostgreSQL database to this code's head, runs the
whole closed loop with the *old* code on it (referral, booking, DICOM C-STORE, AI, report, consult,
prescription, invoice: its main read and write paths), and then reads what it wrote with the new
code: the report, the charges, and the audit hash chain.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from ai_services.models import DiagnosticReport
from billing.models import ChargeItem
from hospital.audit import verify_chain
from hospital.db import get_db
from hospital.migrate import upgrade
from hospital.models import ResourceLastUpdated
from hospital.process_registry import code_schema_head
from tests.conftest import make_test_app

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the old release's tree, with its code on sys.path: only its long-standing entry points.
OLD_RELEASE_LOOP = r'''
import json, sys
from pathlib import Path
from hospital.app import create_app
from hospital.db import get_db
from hospital.seed import seed_demo
from demo.closed_loop import free_port, run_closed_loop, send_with_pynetdicom
from imaging_orders.archive.dicom_server import start_dicom_server

url, work = sys.argv[1], Path(sys.argv[2])
app = create_app({"DATABASE_URL": url, "REDIS_URL": None, "SECRET_KEY": "old-release", "TESTING": True,
                  "INSTANCE_DIR": work, "DICOM_STORAGE_DIR": work / "dicom", "STUDY_QUIET_SECONDS": 3,
                  "LOGIN_ATTEMPTS_PER_MINUTE": 100000})
with app.app_context():
    with get_db(app).transaction() as session:
        seed = seed_demo(session, app)
        ids = (seed.imaging_centre.id, seed.patient.id, seed.pharmacy.id, seed.patient.mrn, seed.patient.dicom_name)
    port = free_port()
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title="HOSPITAL", block=False)
    try:
        summary = run_closed_loop(
            app.test_client(), send_study=lambda files: send_with_pynetdicom("127.0.0.1", port, "HOSPITAL", files),
            drain_jobs=lambda: None, work_dir=work / "loop", imaging_centre_id=ids[0], patient_id=ids[1],
            pharmacy_id=ids[2], patient_mrn=ids[3], patient_dicom_name=ids[4], timeout=120)
    finally:
        server.shutdown()
print("LOOP " + json.dumps({"report_id": summary.report_id, "report_status": summary.report_status,
                            "invoice_id": summary.invoice_id, "charges": len(summary.charges),
                            "instances_sent": summary.instances_sent}))
'''


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def previous_release() -> str:
    """The commit the head migration was merged onto: the last code written for the schema before it."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git history (a checkout, not an export) to find the previous release")
    named = os.environ.get("HOSPITAL_PREVIOUS_RELEASE")
    if named:
        return git("rev-parse", "--verify", f"{named}^{{commit}}")
    # The commit that brought this schema's head migration onto the main line (branches merge in
    # any order, so it is not always the newest commit that added some migration).
    [head_file] = [p for p in (ROOT / "migrations" / "versions").glob(f"{code_schema_head()}_*.py")]
    newest = git("log", "-1", "--first-parent", "--diff-filter=A", "--format=%H", "--",
                 str(head_file.relative_to(ROOT)))
    try:
        return git("rev-parse", "--verify", f"{newest}^1")
    except subprocess.CalledProcessError:
        pytest.skip("the history is too shallow to hold the previous release (fetch with more depth)")


def export_tree(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.mark.e2e
def test_previous_release_runs_the_loop_on_the_new_schema(empty_postgres_url: str, tmp_path: Path) -> None:
    old_commit = previous_release()
    old_tree = export_tree(old_commit, tmp_path / "old")
    old_heads = {p.name.split("_", 1)[0] for p in (old_tree / "migrations" / "versions").glob("[0-9]*.py")}
    assert code_schema_head() not in old_heads, "the previous release must be older than this schema"

    upgrade(empty_postgres_url)  # the new release's migrations: the expand step runs first
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DICOM_STORAGE_DIR")}
    env["PYTHONPATH"] = str(old_tree)
    result = subprocess.run([sys.executable, "-c", OLD_RELEASE_LOOP, empty_postgres_url, str(tmp_path / "work")],
                            cwd=old_tree, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"release {old_commit[:10]} failed on schema {code_schema_head()}:\n" + result.stderr[-4000:]
    summary = json.loads(result.stdout.rsplit("LOOP ", 1)[1])
    assert summary["report_status"] == "final" and summary["instances_sent"] > 0 and summary["charges"] > 0

    # The new code reads what the old code wrote.
    app = make_test_app(empty_postgres_url, tmp_path / "new", DICOM_STORAGE_DIR=tmp_path / "work" / "dicom")
    with app.app_context(), get_db(app).transaction() as session:
        report = session.get(DiagnosticReport, summary["report_id"])
        assert report is not None and report.status.value == "final"
        charges = session.scalars(select(ChargeItem)).all()
        assert len(charges) >= summary["charges"]
        chain = verify_chain(session)
        assert chain.broken is None and chain.rows > 0
        # The versions the old code wrote moved resource_last_updated too (a trigger keeps it,
        # not the new release's version writer), so _lastUpdated searches see them.
        behind = session.scalar(text(
            "SELECT count(*) FROM resource_version v LEFT JOIN resource_last_updated r "
            "ON r.resource_type = v.resource_type AND r.resource_id = v.resource_id "
            "WHERE r.version_id IS NULL OR r.version_id < v.version_id"))
        assert behind == 0 and session.scalar(select(func.count()).select_from(ResourceLastUpdated))
