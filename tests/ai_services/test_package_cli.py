"""`hospital ai package ...`: a partner submits from the command line, the checks run, an
administrator approves; refusals are one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from sqlalchemy.orm import Session

from ai_services.models import ModelPackage, PackageStatus
from hospital.seed import DemoSeed
from tests.ai_services.package_factory import make_classifier_package


def test_submit_check_list_and_approve_from_the_command_line(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["ai", "package", "submit", str(make_classifier_package(tmp_path)), "--as", "partner"])
    assert result.exit_code == 0, result.output
    assert "submitted nodule-classifier 1.0.0 as package" in result.output
    assert "status: awaiting_approval" in result.output  # no Redis in tests: the check ran inline
    package_id = int(result.output.split("as package ")[1].split()[0])

    listed = runner.invoke(args=["ai", "package", "list", "--as", "partner"])
    assert f"{package_id}\tnodule-classifier 1.0.0\tawaiting_approval\tAcme Imaging AI" in listed.output
    assert "  held-out platform-held-out-v1: 3 cases (1 lesion-free)" in listed.output
    assert "not evaluated: the manifest names no positive class" in listed.output

    refused = runner.invoke(args=["ai", "package", "approve", str(package_id), "--as", "partner"])
    assert refused.exit_code == 1 and "only an administrator" in refused.output and "Traceback" not in refused.output
    approved = runner.invoke(args=["ai", "package", "approve", str(package_id), "--as", "admin"])
    assert approved.exit_code == 0 and "nodule-classifier 1.0.0: approved" in approved.output
    package = db_session.get(ModelPackage, package_id)
    assert package is not None
    db_session.refresh(package)
    assert package.status is PackageStatus.APPROVED


def test_a_malformed_package_is_refused_in_one_line(app: Flask, db_session: Session, demo: DemoSeed,
                                                   tmp_path: Path) -> None:
    broken = make_classifier_package(tmp_path, price={"amount_minor": 5, "currency": "euro"})
    result = app.test_cli_runner().invoke(args=["ai", "package", "submit", str(broken), "--as", "partner"])
    assert result.exit_code == 1
    assert "Error: package refused: manifest does not match the schema: price/currency" in result.output
    assert "Traceback" not in result.output


def test_an_administrator_adds_a_routing_rule_from_the_command_line(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    runner = app.test_cli_runner()
    unknown = runner.invoke(args=["ai", "package", "route", "nodule-classifier", "--modality", "CT", "--as", "admin"])
    assert unknown.exit_code == 1 and "no model package named 'nodule-classifier'" in unknown.output
    runner.invoke(args=["ai", "package", "submit", str(make_classifier_package(tmp_path)), "--as", "partner"])
    added = runner.invoke(args=["ai", "package", "route", "nodule-classifier", "--modality", "ct",
                                "--body-part", "chest", "--as", "admin"])
    assert added.exit_code == 0, added.output
    assert "CT CHEST -> nodule-classifier" in added.output
    refused = runner.invoke(args=["ai", "package", "route", "nodule-classifier", "--modality", "CT", "--as", "partner"])
    assert refused.exit_code == 1 and "only an administrator sets routing rules" in refused.output
