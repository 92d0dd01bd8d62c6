"""The model card page shows every version with its status and the promotion decision."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ai_services.models import ModelStatus, ModelVersion
from hospital.seed import DEMO_PASSWORD, DemoSeed


def test_model_page_lists_rejected_candidates_with_their_reason(client: Any, demo: DemoSeed, db_session: Session) -> None:
    db_session.add(ModelVersion(name="lesion-detector", version="2-candidate", weights_path="/nowhere.pt",
                                weights_sha256="0" * 64, status=ModelStatus.REJECTED,
                                decision_reason="not promoted: mean sensitivity 0.58 < 0.61 + margin 0.05"))
    db_session.commit()
    token = client.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "admin", "password": DEMO_PASSWORD, "csrf_token": token})
    html = client.get("/models").get_data(as_text=True)
    assert "2-candidate" in html and "rejected" in html and "not promoted: mean sensitivity 0.58" in html
    assert "active" in html  # the shipped v1
