"""The model package pages: a partner uploads a package and follows it; an administrator
approves after confirming; a bad upload is a clear message on the page; other roles are kept out."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from ai_services.models import ModelPackage, PackageStatus
from hospital.seed import DEMO_PASSWORD, DemoSeed
from tests.ai_services.package_factory import make_classifier_package
from tests.pages import choose_language


def csrf(client: FlaskClient, path: str) -> str:
    return client.get(path).get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]


def sign_in(client: FlaskClient, username: str) -> None:
    client.post("/login", data={"username": username, "password": DEMO_PASSWORD, "csrf_token": csrf(client, "/login")})


def upload(client: FlaskClient, package: Path) -> str:
    response = client.post("/model-packages", data={
        "csrf_token": csrf(client, "/model-packages"),
        "package": (io.BytesIO(package.read_bytes()), "package.zip"),
    }, content_type="multipart/form-data", follow_redirects=True)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_a_partner_uploads_a_package_and_an_admin_approves_it(
    client: FlaskClient, demo: DemoSeed, db_session: Session, tmp_path: Path
) -> None:
    sign_in(client, "partner")
    page = upload(client, make_classifier_package(tmp_path))
    assert "nodule-classifier 1.0.0 was received and verified" in page
    package = db_session.query(ModelPackage).one()
    # No Redis in tests: the checks ran inline after the request committed.
    db_session.refresh(package)
    assert package.status is PackageStatus.AWAITING_APPROVAL
    detail = client.get(f"/model-packages/{package.id}").get_data(as_text=True)
    assert "passed on 3 reference studies" in detail and "€12.00; partner share 70.00%" in detail
    assert "Approve</button>" not in detail  # the partner does not decide
    assert client.post(f"/model-packages/{package.id}/approve",
                       data={"csrf_token": csrf(client, "/model-packages")}).status_code == 403

    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    sign_in(client, "admin")
    token = csrf(client, f"/model-packages/{package.id}")
    asked = client.post(f"/model-packages/{package.id}/approve", data={"csrf_token": token})
    assert "Approve nodule-classifier 1.0.0?" in asked.get_data(as_text=True)
    db_session.refresh(package)
    assert package.status is PackageStatus.AWAITING_APPROVAL  # nothing happens until it is agreed
    done = client.post(f"/model-packages/{package.id}/approve", data={"csrf_token": token, "confirmed": "yes"},
                       follow_redirects=True)
    assert "nodule-classifier 1.0.0: approved." in done.get_data(as_text=True)
    db_session.refresh(package)
    assert package.status is PackageStatus.APPROVED


def test_a_malformed_upload_is_a_message_on_the_page(client: FlaskClient, demo: DemoSeed, tmp_path: Path) -> None:
    sign_in(client, "partner")
    page = upload(client, make_classifier_package(tmp_path, modalities=[]))
    assert re.search(r"package refused: manifest does not match the schema: modalities: \[\] has less than 1 item", page)
    assert "No package has been submitted yet." in page


def test_other_roles_do_not_reach_the_package_pages(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    assert client.get("/model-packages").status_code == 403


@pytest.fixture
def full_held_out_set(app: Flask) -> Iterator[None]:
    before = app.config["AI_PACKAGE_HELD_OUT_CASES"]
    app.config["AI_PACKAGE_HELD_OUT_CASES"] = 12
    yield
    app.config["AI_PACKAGE_HELD_OUT_CASES"] = before


def test_the_package_page_shows_the_held_out_numbers_beside_the_claims_and_marks_an_unfounded_one(
    client: FlaskClient, demo: DemoSeed, db_session: Session, tmp_path: Path, full_held_out_set: None
) -> None:
    sign_in(client, "partner")
    # A classifier that sees the whole chest, of untrained weights, claiming a near-perfect AUROC.
    upload(client, make_classifier_package(
        tmp_path, input={"spacing_mm": [6.0, 6.0, 5.0], "size": [64, 64], "channels": 1},
        output={"kind": "classification", "classes": ["normal", "abnormal"], "positive_class": "abnormal"},
        validated_metrics={"auroc": 0.999, "specificity": 0.01}))
    package = db_session.query(ModelPackage).one()
    db_session.refresh(package)
    assert package.status is PackageStatus.AWAITING_APPROVAL, package.check_report
    held = package.check_report["held_out"]
    auroc = next(m for m in held["metrics"] if m["name"] == "auroc")
    assert auroc["ci"][1] < 0.999
    page = client.get(f"/model-packages/{package.id}").get_data(as_text=True)
    section = page.split('id="held-out"')[1].split("</section>")[0]
    assert "12 cases, 4 of them lesion-free, 8 lesions on the slices the model reads" in section
    auroc_row = section.split("<td data-label=\"Metric\">AUROC</td>")[1].split("</tr>")[0]
    assert f"{auroc['value']:.2f} ({auroc['ci'][0]:.2f}–{auroc['ci'][1]:.2f})" in auroc_row
    assert "12 cases" in auroc_row and "auroc: 0.999" in auroc_row
    assert '<span class="badge bad claim-unsupported">above the measured 95% CI</span>' in auroc_row
    specificity_row = section.split("<td data-label=\"Metric\">Specificity</td>")[1].split("</tr>")[0]
    assert "specificity: 0.01" in specificity_row and "claim-unsupported" not in specificity_row

    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    sign_in(client, "admin")
    choose_language(client, "zh_CN", f"/model-packages/{package.id}")
    chinese = client.get(f"/model-packages/{package.id}").get_data(as_text=True)
    assert "留出集评估" in chinese and "高于实测的 95% 置信区间" in chinese
