"""The unit of work: a request or a job commits all of its work or none of it, and nothing but
`hospital.db` commits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.audit import record_access, record_denied
from hospital.db import get_db, request_session
from hospital.errors import Conflict
from hospital.jobs import enqueue, run_job
from hospital.models import AuditEvent, JobRecord, JobStatus, Organization, OrganizationKind
from tests.conftest import make_test_app

ROOT = Path(__file__).resolve().parents[2]
APPLICATION_PACKAGES = ("hospital", "referrals", "imaging_orders", "ai_services", "followup", "billing", "synthetic", "demo")
UNIT_OF_WORK_MODULES = {Path("hospital/db.py")}


def add_organization(session: Session, name: str) -> None:
    session.add(Organization(name=name, kind=OrganizationKind.IMAGING_CENTRE))
    session.flush()


def writes_then_fails(session: Session, name: str) -> None:
    """A job whose second step fails after its first step wrote."""
    add_organization(session, name)
    raise RuntimeError("the second step failed")


@pytest.fixture()
def uow_app(live_database: str, tmp_path: Path) -> Flask:
    app = make_test_app(live_database, tmp_path)

    @app.post("/test/write-then-refuse/<name>")
    def write_then_refuse(name: str) -> tuple[str, int]:
        session = request_session()
        add_organization(session, name)
        record_access(session, None, "C", "Organization", name)
        record_denied(None, "U", "Organization", name, "refused after a write")
        raise Conflict("the second step refused")

    @app.post("/test/write/<name>")
    def write(name: str) -> tuple[str, int]:
        add_organization(request_session(), name)
        return "", 204

    @app.post("/test/duplicate/<name>")
    def duplicate(name: str) -> tuple[str, int]:
        session = request_session()
        # Two rows with one unique name: the failure comes only at the commit, after the view.
        session.add(Organization(name=name, kind=OrganizationKind.IMAGING_CENTRE, ae_title="DUPAE"))
        session.add(Organization(name=name + "-2", kind=OrganizationKind.IMAGING_CENTRE, ae_title="DUPAE"))
        return "", 204

    return app


# A bearer header: these routes check no user, and a request without cookies needs no CSRF token.
API = {"Authorization": "Bearer unit-of-work-test", "Accept": "application/json"}


def count(app: Flask, model: type, **where: object) -> int:
    with get_db(app).session() as session:
        query = select(func.count()).select_from(model)
        for column, value in where.items():
            query = query.where(getattr(model, column) == value)
        return int(session.scalar(query) or 0)


def test_a_refused_request_keeps_nothing_but_the_record_of_the_refusal(uow_app: Flask) -> None:
    response = uow_app.test_client().post("/test/write-then-refuse/half-done", headers=API)
    assert response.status_code == 409
    assert count(uow_app, Organization, name="half-done") == 0
    assert count(uow_app, AuditEvent, entity_id="half-done", outcome=0) == 0
    assert count(uow_app, AuditEvent, entity_id="half-done", outcome=4) == 1


def test_a_request_that_returns_is_committed_before_its_response(uow_app: Flask) -> None:
    assert uow_app.test_client().post("/test/write/kept", headers=API).status_code == 204
    assert count(uow_app, Organization, name="kept") == 1


def test_a_commit_that_fails_is_answered_as_an_error_not_as_success(uow_app: Flask) -> None:
    response = uow_app.test_client().post("/test/duplicate/twice", headers=API)
    assert response.status_code == 409
    assert count(uow_app, Organization, name="twice") == 0


def test_a_failing_job_step_rolls_back_the_whole_job(uow_app: Flask) -> None:
    with uow_app.app_context():
        with get_db().transaction() as session:
            record_id = enqueue(session, "tests.hospital.test_unit_of_work.writes_then_fails", name="job-half").id
        with pytest.raises(RuntimeError, match="second step"):
            run_job(record_id)
    assert count(uow_app, Organization, name="job-half") == 0
    with get_db(uow_app).session() as session:
        record = session.get(JobRecord, record_id)
        assert record is not None and record.status is JobStatus.FAILED


def _commit_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit"
    ]


def test_only_the_unit_of_work_module_commits() -> None:
    offenders = {
        str(path.relative_to(ROOT)): lines
        for package in APPLICATION_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT) not in UNIT_OF_WORK_MODULES and (lines := _commit_calls(path))
    }
    assert offenders == {}, f"commit() outside hospital/db.py: {offenders}"
