"""The modality worklist stays a range read as appointments pile up (issue #18): with a year and
more of appointments loaded (40 a day, 30,000 in all) and ANALYZEd, PostgreSQL's plan for the
statement a C-FIND for one day (at one station, or at all of them) sends reads the day from an
index on the appointments' start, never a whole table that grows with the bookings.

bench/growth.py measures what this guards (`worklist C-FIND for one day`)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from hospital.seed import DemoSeed
from imaging_orders.models import Schedule
from imaging_orders.worklist import find_worklist_items
from tests.imaging_orders.test_worklist import query
from tests.plans import scan_problems, statements_sent

ROWS = 30_000
PER_DAY = 40
FIRST_DAY = date(2026, 1, 5)
# The tables that grow with every booking: a day's C-FIND must not read them whole.
BIG_TABLES = {"appointment", "slot", "referral", "patient"}


def load(session: Session, demo: DemoSeed) -> Schedule:
    schedule = session.scalar(select(Schedule).where(Schedule.organization_id == demo.imaging_centre.id))
    assert schedule is not None
    params = {"rows": ROWS, "per_day": PER_DAY, "first": FIRST_DAY, "schedule": schedule.id,
              "requester": demo.users["clinician"].practitioner_id, "user": demo.users["clinician"].id,
              "centre": demo.imaging_centre.id}
    statements = [
        "INSERT INTO patient (mrn, family_name, given_name, gender, timezone, created_at, updated_at) "
        "SELECT 'W-' || n, 'Fam' || n, 'Given' || n, 'unknown', 'UTC', now(), now() FROM generate_series(1, :rows) AS n",
        "INSERT INTO referral (patient_id, requester_id, created_by_user_id, performer_organization_id, status, priority, "
        "modality, body_part, procedure_description, reason, accession_number, created_at, updated_at) "
        "SELECT p.id, :requester, :user, :centre, 'scheduled', 'routine', 'CT', 'CHEST', 'CT chest', 'cough', 'W' || n, "
        "now(), now() FROM generate_series(1, :rows) AS n JOIN patient p ON p.mrn = 'W-' || n",
        "INSERT INTO slot (schedule_id, start, \"end\", status, version) "
        "SELECT :schedule, CAST(:first AS timestamp) + (n / :per_day) * interval '1 day' + (n % :per_day) * interval '15 minutes', "
        "CAST(:first AS timestamp) + (n / :per_day) * interval '1 day' + (n % :per_day + 1) * interval '15 minutes', "
        "'busy', 1 FROM generate_series(1, :rows) AS n",
        "INSERT INTO appointment (slot_id, referral_id, patient_id, start, \"end\", status, description, booked_by_user_id, "
        "created_at) SELECT s.id, r.id, r.patient_id, s.start, s.\"end\", 'booked', 'CT chest', :user, now() "
        "FROM generate_series(1, :rows) AS n JOIN referral r ON r.accession_number = 'W' || n "
        "JOIN slot s ON s.schedule_id = :schedule AND s.start = CAST(:first AS timestamp) + (n / :per_day) * interval '1 day' "
        "+ (n % :per_day) * interval '15 minutes'",
    ]
    for statement in statements:
        session.execute(text(statement), params)
    for table in ("patient", "referral", "slot", "appointment"):
        session.execute(text(f"ANALYZE {table}"))
    session.commit()
    return schedule


@pytest.mark.parametrize("at_one_station", [True, False])
def test_a_days_worklist_is_read_from_an_index_on_the_appointments_start(
    db_session: Session, demo: DemoSeed, at_one_station: bool
) -> None:
    if db_session.bind is None or db_session.bind.dialect.name != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    schedule = load(db_session, demo)
    day = FIRST_DAY + timedelta(days=300)
    station = schedule.station_ae_title if at_one_station else ""
    with statements_sent(db_session.get_bind(), {"appointment"}) as sent:
        items = list(find_worklist_items(db_session, query(station=station, date=f"{day:%Y%m%d}")))
    assert len(items) == PER_DAY, "the day's steps, all of them: the query itself must work"
    assert sent, "no SQL on the appointments was captured"
    problems = scan_problems(db_session.connection(), sent, BIG_TABLES)
    assert not problems, "\n".join(problems)
