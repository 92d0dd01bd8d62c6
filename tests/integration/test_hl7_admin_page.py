"""The administrator's HL7 page: a real MLLP client sends a malformed message and an order whose
centre is not mapped; the admin sees both, maps the centre on the page, replays the order, and the
referral appears. Nobody else may see the page."""

from __future__ import annotations

import html
import threading

from sqlalchemy import func, select

from ai_services.events import ReportSigned
from hospital.db import get_db
from hospital.models import AuditEvent
from integration.hl7_results import queue_results
from integration.models import Hl7CodeMap, Hl7Message, Hl7Outbound, InboundStatus, OutboundStatus
from referrals.models import Referral
from tests.integration.test_hl7_listener import Node, count, free_port, node, orm, send  # noqa: F401 (the fixture)
from tests.integration.test_hl7_patients_and_results import _Receiver, _ReceiverHandler, signed_report
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def message_id(node: Node, control_id: str) -> int:
    with get_db(node.app).transaction() as session:
        found = session.scalar(select(Hl7Message.id).where(Hl7Message.control_id == control_id))
        assert found is not None
        return int(found)


def test_admin_sees_failed_messages_maps_the_centre_and_replays(node: Node) -> None:
    assert str(send(node, b"PID|1||X^^^^MR||<script>alert(1)</script>\rORC|NW|1\r")["MSA.F1"]) == "AR"
    unmapped = orm("CTRL-NEW", placer="PL-2002").replace("|RIS|RIVERSIDE|", "|RIS|NORTHSIDE|")
    assert str(send(node, unmapped)["MSA.F1"]) == "AE"
    assert str(send(node, orm("CTRL-OK"))["MSA.F1"]) == "AA"
    client = node.app.test_client()
    sign_in(client, "admin")

    page = client.get("/admin/hl7").get_data(as_text=True)
    assert "CTRL-NEW" in page and "NORTHSIDE" in page and "CTRL-OK" not in page  # AE/AR by default
    assert "CTRL-OK" in client.get("/admin/hl7?all=1").get_data(as_text=True)

    # The malformed one's raw text is shown escaped, one segment a line.
    with get_db(node.app).transaction() as session:
        bad_id = session.scalar(select(Hl7Message.id).where(Hl7Message.status == InboundStatus.REJECTED))
    detail = client.get(f"/admin/hl7/messages/{bad_id}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in detail
    assert html.escape("PID|1||X^^^^MR||<script>alert(1)</script>", quote=False) + "\nORC|NW|1" in detail

    ae_id = message_id(node, "CTRL-NEW")
    detail = client.get(f"/admin/hl7/messages/{ae_id}").get_data(as_text=True)
    assert 'id="ack-code"' in detail and "AE" in detail and "NORTHSIDE" in detail

    # A bad mapping is refused with a reason; a good one is saved.
    codes = client.get("/admin/hl7/codes").get_data(as_text=True)
    token = csrf_token_of(codes)
    refused = client.post("/admin/hl7/codes", data={"csrf_token": token, "kind": "centre", "code": "NORTHSIDE",
                                                     "target_id": "999999"}, follow_redirects=True)
    assert "is not an imaging centre" in refused.get_data(as_text=True)
    client.post("/admin/hl7/codes", data={"csrf_token": token, "kind": "centre", "code": "NORTHSIDE",
                                          "target_id": str(node.centre_id)})
    assert 'data-code="NORTHSIDE"' in client.get("/admin/hl7/codes").get_data(as_text=True)

    # Replay asks first; nothing happens until agreed.
    asked = client.post(f"/admin/hl7/messages/{ae_id}", data={"csrf_token": token})
    assert count(node, Referral) == 1 and "again?" in asked.get_data(as_text=True)
    done = client.post(f"/admin/hl7/messages/{ae_id}", data={"csrf_token": token, "confirmed": "yes"},
                       follow_redirects=True).get_data(as_text=True)
    assert "accepted (AA)" in done
    assert count(node, Referral) == 2
    with get_db(node.app).transaction() as session:
        row = session.get(Hl7Message, ae_id)
        assert row is not None and row.status is InboundStatus.PROCESSED and row.replay_count == 1
        audited = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.entity_type == "Hl7Message", AuditEvent.entity_id == str(ae_id), AuditEvent.action == "U"))
        assert audited == 1
    # Without a CSRF token nothing is replayed.
    assert client.post(f"/admin/hl7/messages/{ae_id}", data={"confirmed": "yes"}).status_code == 403


def test_only_an_admin_sees_the_hl7_page(node: Node) -> None:
    send(node, orm().replace("|RIS|RIVERSIDE|", "|RIS|ELSEWHERE|"))
    client = node.app.test_client()
    sign_in(client, "clinician")
    ae_id = message_id(node, "CTRL-1")
    for path in ("/admin/hl7", f"/admin/hl7/messages/{ae_id}", "/admin/hl7/codes"):
        assert client.get(path).status_code == 403
    assert client.post(f"/admin/hl7/messages/{ae_id}", data={"confirmed": "yes"}).status_code in (400, 403)
    assert count(node, Referral) == 0


def test_admin_resends_a_dead_letter_once_its_destination_answers(node: Node) -> None:
    port = free_port()
    node.app.config["HL7_RESULT_DESTINATIONS"] = f"127.0.0.1:{port}"  # nobody listens there yet
    report_id, patient_id = signed_report(node)
    with node.app.app_context(), get_db(node.app).transaction() as session:
        queue_results(session, node.app, ReportSigned(report_id=report_id, patient_id=patient_id, referral_id=None))
    with get_db(node.app).transaction() as session:
        outbound = session.scalars(select(Hl7Outbound)).one()
        assert outbound.status is OutboundStatus.DEAD
        outbound_id, control_id = outbound.id, outbound.control_id
    client = node.app.test_client()
    sign_in(client, "admin")
    page = client.get("/admin/hl7").get_data(as_text=True)
    assert f'data-outbound-id="{outbound_id}"' in page and control_id in page

    server = _Receiver(("127.0.0.1", port), _ReceiverHandler)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = client.post(f"/admin/hl7/outbound/{outbound_id}/resend",
                           data={"csrf_token": csrf_token_of(page), "confirmed": "yes"}, follow_redirects=True)
    finally:
        server.shutdown()
        server.server_close()

    assert "queued again" in done.get_data(as_text=True)
    assert [str(m["MSH.F10"]) for m in server.received] == [control_id]
    with get_db(node.app).transaction() as session:
        row = session.get(Hl7Outbound, outbound_id)
        assert row is not None and row.status is OutboundStatus.SENT
    # Sent: no second resend.
    again = client.post(f"/admin/hl7/outbound/{outbound_id}/resend",
                        data={"csrf_token": csrf_token_of(page), "confirmed": "yes"}, follow_redirects=True)
    assert "not a dead letter" in again.get_data(as_text=True)


def test_the_cli_maps_codes_through_the_same_checks(node: Node) -> None:
    runner = node.app.test_cli_runner()

    refused = runner.invoke(args=["hl7", "map", "centre", "NORTHSIDE", "999999"])
    mapped = runner.invoke(args=["hl7", "map", "provider", "P777", str(node.clinician_practitioner_id)])

    assert refused.exit_code == 1 and "is not an imaging centre" in refused.output
    assert mapped.exit_code == 0, mapped.output
    with get_db(node.app).transaction() as session:
        codes = set(session.scalars(select(Hl7CodeMap.code)))
    assert "P777" in codes and "NORTHSIDE" not in codes
