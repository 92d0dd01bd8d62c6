"""A patient booking on a phone: free times as a calendar on the centre's clock with nothing chosen,
the centre's address, map link and preparation on the booking form, the appointment and its
confirmation, moving and cancelling that ask first, in English and in Chinese; and the centre's staff
writing those directions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput
from hospital.models import Organization, OrganizationKind, User
from hospital.seed import DemoSeed
from imaging_orders.models import Appointment, AppointmentStatus, ExaminationPreparation, Slot, SlotStatus
from imaging_orders.visit_guide import _insert_once, set_directions, set_preparation, valid_map_url, visit_guide
from tests.pages import choose_language, csrf_token_of, sign_in


def accepted_ct_referral(as_role: Any, demo: DemoSeed) -> int:
    sent = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest with contrast", "reason": "cough",
        "access_reason": "new patient"})
    assert sent.status_code == 201, sent.get_json()
    referral_id = int(sent.get_json()["id"])
    assert as_role("imaging_staff").post(f"/api/referrals/{referral_id}/accept").status_code == 200
    return referral_id


def free_ct_slots(db_session: Session, demo: DemoSeed) -> list[Slot]:
    schedule = demo.extra["schedule"]
    return list(db_session.scalars(
        # Bookable: free and not yet begun (the seeded day's first slots pass as the day goes on).
        select(Slot).where(Slot.schedule_id == schedule.id, Slot.status == SlotStatus.FREE, Slot.start >= utcnow())
        .order_by(Slot.start)))


def set_centre_zone(db_session: Session, demo: DemoSeed, zone: str) -> None:
    demo.imaging_centre.timezone = zone
    db_session.flush()


def test_times_are_radio_chips_by_day_on_the_centres_clock_and_none_is_chosen(
    client: FlaskClient, as_role: Any, demo: DemoSeed, db_session: Session
) -> None:
    accepted_ct_referral(as_role, demo)
    set_centre_zone(db_session, demo, "Asia/Shanghai")  # UTC+8: the seeded 07:00 UTC slot is 15:00 there
    sign_in(client, "patient")
    page = client.get("/appointments").get_data(as_text=True)
    assert "<select" not in page  # no dropdown of a hundred times
    chips = re.findall(r'<input type="radio" name="slot_id" value="(\d+)"([^>]*)>', page)
    assert len(chips) > 20
    assert not any("checked" in attributes for _value, attributes in chips), "nothing is chosen for the patient"
    first = free_ct_slots(db_session, demo)[0]
    assert chips[0][0] == str(first.id)
    assert "15:00" in page and "Asia/Shanghai" in page
    # One heading per day the times fall on, each with its count of free times.
    assert len(re.findall(r'<h3 id="book-\d+-day-\d+">', page)) >= 2
    assert re.search(r"\d+ free times", page)


def test_the_booking_form_shows_where_to_go_and_how_to_prepare(
    client: FlaskClient, as_role: Any, demo: DemoSeed
) -> None:
    accepted_ct_referral(as_role, demo)
    sign_in(client, "patient")
    page = client.get("/appointments").get_data(as_text=True)
    assert "12 Riverside Road" in page
    assert 'href="https://www.openstreetmap.org/' in page and 'rel="noopener noreferrer"' in page
    assert "do not eat for 4 hours before it" in page  # CT with contrast
    assert "CT scan (computed tomography)" in page  # the abbreviation spelled out


def test_booking_without_choosing_a_time_says_so(client: FlaskClient, as_role: Any, demo: DemoSeed,
                                                 db_session: Session) -> None:
    referral_id = accepted_ct_referral(as_role, demo)
    sign_in(client, "patient")
    token = csrf_token_of(client.get("/appointments").get_data(as_text=True))
    answer = client.post("/appointments", data={"csrf_token": token, "referral_id": referral_id},
                         follow_redirects=True)
    assert answer.status_code == 200
    assert "Choose a time first." in answer.get_data(as_text=True)
    assert db_session.scalar(select(Appointment).where(Appointment.referral_id == referral_id)) is None


def test_after_booking_the_confirmation_says_when_where_and_how_to_prepare(
    client: FlaskClient, as_role: Any, demo: DemoSeed, db_session: Session
) -> None:
    referral_id = accepted_ct_referral(as_role, demo)
    set_centre_zone(db_session, demo, "Europe/Berlin")
    slot = free_ct_slots(db_session, demo)[3]
    sign_in(client, "patient")
    token = csrf_token_of(client.get("/appointments").get_data(as_text=True))
    booked = client.post("/appointments", data={"csrf_token": token, "referral_id": referral_id, "slot_id": slot.id})
    assert booked.status_code == 302 and "done=" in booked.headers["Location"]
    page = client.get(booked.headers["Location"]).get_data(as_text=True)
    confirmation = page.split('id="done"')[1].split("</section>")[0]
    local = slot.start.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert "You are booked" in confirmation and f"{local:%H:%M} CE" in confirmation
    assert "12 Riverside Road" in confirmation and "do not eat for 4 hours" in confirmation
    assert "Appointment booked for" in page
    # The appointment in the list: status in a patient's words, with the same directions.
    card = page.split('id="appointments"')[1]
    assert ">Booked</span>" in card and "Open the map" in card


def test_moving_and_cancelling_ask_first_on_a_page_without_scripts(
    client: FlaskClient, as_role: Any, demo: DemoSeed, db_session: Session
) -> None:
    referral_id = accepted_ct_referral(as_role, demo)
    first, second = free_ct_slots(db_session, demo)[:2]
    sign_in(client, "patient")
    token = csrf_token_of(client.get("/appointments").get_data(as_text=True))
    client.post("/appointments", data={"csrf_token": token, "referral_id": referral_id, "slot_id": first.id})
    appointment = db_session.scalars(select(Appointment).where(Appointment.referral_id == referral_id)).one()
    page = client.get("/appointments").get_data(as_text=True)
    assert f'id="move-form-{appointment.id}" data-confirm="Move your appointment' in page
    assert f'id="cancel-form-{appointment.id}" data-confirm="Cancel your CT chest with contrast on' in page

    form = {"csrf_token": token, "appointment_id": appointment.id, "slot_id": second.id}
    asked = client.post("/appointments", data={**form, "action": "move"})
    assert asked.status_code == 200 and "Yes, move it" in asked.get_data(as_text=True)
    db_session.refresh(appointment)
    assert appointment.slot_id == first.id  # nothing changed yet
    client.post("/appointments", data={**form, "action": "move", "confirmed": "yes"})
    db_session.refresh(appointment)
    assert appointment.slot_id == second.id

    asked = client.post("/appointments", data={**form, "action": "cancel"})
    assert "Yes, cancel the appointment" in asked.get_data(as_text=True)
    db_session.refresh(appointment)
    assert appointment.status is AppointmentStatus.BOOKED
    client.post("/appointments", data={**form, "action": "cancel", "confirmed": "yes"})
    db_session.refresh(appointment)
    assert appointment.status is AppointmentStatus.CANCELLED


def test_the_booking_page_in_chinese(client: FlaskClient, as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    referral_id = accepted_ct_referral(as_role, demo)
    set_centre_zone(db_session, demo, "Asia/Shanghai")
    sign_in(client, "patient")
    choose_language(client, "zh_CN", "/appointments")
    page = client.get("/appointments").get_data(as_text=True)
    assert '<html lang="zh-CN">' in page
    assert "先选日期，再选时间" in page and "预约所选时间" in page
    assert "滨江路12号" in page and "检查前4小时禁食" in page and "CT检查（计算机断层扫描）" in page
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日星期", page), "day headings as a Chinese reader writes dates"
    slot = free_ct_slots(db_session, demo)[0]
    token = csrf_token_of(page)
    done = client.post("/appointments", data={"csrf_token": token, "referral_id": referral_id, "slot_id": slot.id},
                       follow_redirects=True).get_data(as_text=True)
    assert "预约成功" in done and ">已预约</span>" in done and "取消预约" in done
    refused = client.post("/appointments", data={"csrf_token": token, "referral_id": referral_id},
                          follow_redirects=True).get_data(as_text=True)
    assert "请先选择时间。" in refused


# The centre's staff write the directions ----------------------------------------------------------


def test_staff_write_directions_and_preparation_that_patients_then_read(
    client: FlaskClient, as_role: Any, demo: DemoSeed, db_session: Session
) -> None:
    sign_in(client, "imaging_staff")
    own = client.get("/my-centre/visit-guide")
    assert own.status_code == 302
    page = client.get(own.headers["Location"]).get_data(as_text=True)
    token = csrf_token_of(page)
    saved = client.post(own.headers["Location"], data={
        "csrf_token": token, "part": "directions", "address_en": "1 Harbour Street", "address_zh": "港口街1号",
        "map_url": "https://map.example/harbour"}, follow_redirects=True)
    assert "Directions saved." in saved.get_data(as_text=True)
    client.post(own.headers["Location"], data={
        "csrf_token": token, "part": "preparation", "modality": "MR", "instructions_en": "Remove all metal.",
        "instructions_zh": "请取下所有金属物品。"})
    guide = visit_guide(db_session, demo.imaging_centre.id)
    assert (guide.address_en, guide.address_zh, guide.map_url) == ("1 Harbour Street", "港口街1号",
                                                                  "https://map.example/harbour")
    assert guide.preparations["MR"].instructions_zh == "请取下所有金属物品。"


def test_a_map_link_that_is_not_a_web_address_is_refused_with_a_reason(
    client: FlaskClient, demo: DemoSeed, db_session: Session
) -> None:
    with pytest.raises(InvalidInput, match="https://"):
        valid_map_url("javascript:alert(1)")
    assert valid_map_url("  ") is None
    sign_in(client, "imaging_staff")
    path = f"/centres/{demo.imaging_centre.id}/visit-guide"
    token = csrf_token_of(client.get(path).get_data(as_text=True))
    refused = client.post(path, data={"csrf_token": token, "part": "directions", "address_en": "Typed address",
                                      "map_url": "javascript:alert(1)"})
    body = refused.get_data(as_text=True)
    assert refused.status_code == 422 and "must be a web address" in body
    assert 'value="Typed address"' in body  # what was typed comes back
    assert visit_guide(db_session, demo.imaging_centre.id).map_url != "javascript:alert(1)"


def test_only_the_centres_own_staff_and_administrators_write_its_directions(
    db_session: Session, demo: DemoSeed
) -> None:
    other = Organization(name="Harbour Imaging", kind=OrganizationKind.IMAGING_CENTRE, ae_title="HARBOUR")
    db_session.add(other)
    db_session.flush()
    staff: User = demo.users["imaging_staff"]
    with pytest.raises(Forbidden):
        set_directions(db_session, staff, other.id, "x", "", "")
    with pytest.raises(Forbidden):
        set_preparation(db_session, demo.users["patient"], demo.imaging_centre.id, "CT", "x", "")
    set_directions(db_session, demo.users["admin"], other.id, "2 Quay", "码头2号", "")
    assert visit_guide(db_session, other.id).address_zh == "码头2号"


def test_empty_instructions_remove_a_preparation(db_session: Session, demo: DemoSeed) -> None:
    staff = demo.users["imaging_staff"]
    assert set_preparation(db_session, staff, demo.imaging_centre.id, "ct", "", "") is None
    assert db_session.scalar(select(ExaminationPreparation).where(
        ExaminationPreparation.organization_id == demo.imaging_centre.id,
        ExaminationPreparation.modality == "CT")) is None
    with pytest.raises(InvalidInput, match="XX"):
        set_preparation(db_session, staff, demo.imaging_centre.id, "XX", "a", "")


def test_two_first_saves_at_once_are_a_conflict_not_a_crash(db_session: Session, demo: DemoSeed) -> None:
    centre = demo.imaging_centre.id
    # What another request committed a moment earlier, unseen by this one's ORM session.
    db_session.execute(delete(ExaminationPreparation).where(ExaminationPreparation.organization_id == centre))
    db_session.execute(insert(ExaminationPreparation).values(
        organization_id=centre, modality="US", instructions_en="Full bladder.", instructions_zh="憋尿。",
        updated_at=utcnow()))
    with pytest.raises(Conflict, match="at the same moment"):
        _insert_once(db_session, ExaminationPreparation(organization_id=centre, modality="US",
                                                        instructions_en="Drink water.", instructions_zh=""))
    # Only the savepoint was undone: the session goes on and the first save stands.
    assert visit_guide(db_session, centre).preparations["US"].instructions_en == "Full bladder."


def test_staff_and_admin_pages_in_chinese(client: FlaskClient, as_role: Any, demo: DemoSeed) -> None:
    accepted_ct_referral(as_role, demo)
    sign_in(client, "imaging_staff")
    choose_language(client, "zh_CN", "/worklist")
    worklist = client.get("/worklist").get_data(as_text=True)
    assert "的工作列表" in worklist and "前一天" in worklist and re.search(r"\d{4}年\d{1,2}月\d{1,2}日星期", worklist)
    incoming = client.get("/incoming").get_data(as_text=True)
    assert "待接受的转诊" in incoming and "已接受，尚未预约" in incoming
    guide = client.get(f"/centres/{demo.imaging_centre.id}/visit-guide").get_data(as_text=True)
    assert "中文地址" in guide and "CT检查（计算机断层扫描）" in guide
    refused = client.post(f"/centres/{demo.imaging_centre.id}/visit-guide", data={
        "csrf_token": csrf_token_of(guide), "part": "directions", "map_url": "ftp://x"}).get_data(as_text=True)
    assert "地图链接必须是以https://开头的网址" in refused


def test_the_referring_clinician_books_for_the_patient_on_the_same_page(
    client: FlaskClient, as_role: Any, demo: DemoSeed, db_session: Session
) -> None:
    referral_id = accepted_ct_referral(as_role, demo)
    sign_in(client, "clinician")
    page = client.get("/appointments").get_data(as_text=True)
    assert "Alex Rivera" in page and "12 Riverside Road" in page
    slot = free_ct_slots(db_session, demo)[0]
    done = client.post("/appointments", data={"csrf_token": csrf_token_of(page), "referral_id": referral_id,
                                              "slot_id": slot.id}, follow_redirects=True).get_data(as_text=True)
    assert "You are booked" in done
    appointment = db_session.scalars(select(Appointment).where(Appointment.referral_id == referral_id)).one()
    assert appointment.booked_by_user_id == demo.users["clinician"].id
    # Someone else's appointment id in the address shows no confirmation.
    sign_in(client, "patient2")
    other = client.get(f"/appointments?done={appointment.id}").get_data(as_text=True)
    assert "You are booked" not in other and "Riverside Road" not in other
