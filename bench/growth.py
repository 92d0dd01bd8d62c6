"""How cost grows with the data (issue 18): the same requests at 1k, 10k, 100k (and 1M) records.

Run: `.venv/bin/python bench/growth.py --sizes 1000 10000 100000 --samples 60` (add 1000000 when
there is time: loading it takes minutes). It makes a throwaway PostgreSQL database
(TEST_DATABASE_ADMIN_URL), seeds the demo, then grows the tables in steps with a bulk loader
(`INSERT ... SELECT` over `generate_series`, one statement per table and step, then `ANALYZE`):
per record one patient, one referral, one imaging study with one series and five instances, one
preliminary report with one AI finding (a FHIR Observation) and one billable charge item. At each
size it times, in process through the Flask test client with the administrator's bearer token
(every read audited, as in production), p50 and p99 of:

- FHIR read `GET /fhir/Patient/{id}`;
- FHIR search `GET /fhir/Observation?patient={id}` and `GET /fhir/Patient?family={name}`;
- FHIR search `GET /fhir/ServiceRequest?patient={id}`;
- a deep FHIR search page: `GET /fhir/Patient?_count=10&_cursor=...` after a random patient (the
  cursor its `next` link would carry there);
- QIDO-RS `GET /dicomweb/studies?PatientID={mrn}`;
- invoice generation (`billing.service.issue_invoice` for one patient's charge, then rolled back);

each on random records among those loaded, and prints a Markdown table with each p50 as a ratio
to the smallest size's (the goal: within 1.5x from 1k to 1M). `--plot FILE.png` draws p50 against
size (needs matplotlib: `pip install matplotlib`).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from hospital.app import create_app  # noqa: E402
from hospital.db import get_db  # noqa: E402
from hospital.migrate import upgrade  # noqa: E402
from hospital.seed import DEMO_PASSWORD, DemoSeed, seed_demo  # noqa: E402

ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
INSTANCES_PER_STUDY = 5
WORKLIST_PER_DAY = 40
WORKLIST_FIRST_DAY = "2027-01-04"

# One statement per table, over the record numbers :lo..:hi. Ids are taken from each table's
# sequence; rows of one record find each other through their unique keys (MRN, UIDs).
LOAD = [
    """INSERT INTO patient (mrn, family_name, given_name, gender, timezone, created_at, updated_at)
       SELECT 'G-' || n, 'Fam' || (n % 50000), 'Given' || n, CASE WHEN n % 2 = 0 THEN 'female' ELSE 'male' END,
              'UTC', now(), now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n""",
    """INSERT INTO referral (patient_id, requester_id, created_by_user_id, performer_organization_id, status, priority,
                             modality, body_part, procedure_description, reason, accession_number, created_at, updated_at)
       SELECT p.id, :requester, :clinician_user, :centre, 'completed', 'routine', 'CT', 'CHEST', 'CT chest',
              'cough', 'G' || n, now() - (n % 900) * interval '1 hour', now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n JOIN patient p ON p.mrn = 'G-' || n""",
    """INSERT INTO imaging_study (study_instance_uid, accession_number, referral_id, patient_id, organization_id, status,
                                  dicom_patient_id, dicom_patient_name, received_at, last_instance_at, completed_at)
       SELECT '2.25.' || (1000000000 + n), 'G' || n, r.id, r.patient_id, :centre, 'available', 'G-' || n,
              'Fam' || (n % 50000) || '^Given' || n, now(), now(), now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n JOIN referral r ON r.accession_number = 'G' || n""",
    """INSERT INTO imaging_series (study_id, series_instance_uid, number, modality, derived)
       SELECT s.id, '2.25.' || (2000000000 + n), 1, 'CT', false
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n JOIN imaging_study s ON s.study_instance_uid = '2.25.' || (1000000000 + n)""",
    f"""INSERT INTO imaging_instance (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, number, path,
                                     size_bytes, sha256, warnings, received_at, version)
       SELECT se.id, '2.25.' || (3000000000 + n * {INSTANCES_PER_STUDY} + k), '1.2.840.10008.5.1.4.1.1.2',
              '1.2.840.10008.1.2.1', k + 1, 'growth/template.dcm', 1024, repeat('0', 64), '[]', now(), 1
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n
       JOIN imaging_series se ON se.series_instance_uid = '2.25.' || (2000000000 + n)
       CROSS JOIN generate_series(0, {INSTANCES_PER_STUDY - 1}) AS k""",
    """INSERT INTO diagnostic_report (study_id, patient_id, referral_id, status, conclusion, issued_at, updated_at)
       SELECT s.id, s.patient_id, s.referral_id, 'preliminary', 'AI draft', now(), now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n JOIN imaging_study s ON s.study_instance_uid = '2.25.' || (1000000000 + n)""",
    """INSERT INTO finding (report_id, patient_id, source, sop_instance_uid, slice_index, x0, y0, x1, y1, diameter_mm,
                           n_slices, confidence, body_site, review_status, created_at)
       SELECT d.id, d.patient_id, 'ai', '2.25.' || (3000000000 + n * 5), 2, 10, 10, 30, 30, 14.0, 3, 0.7, 'lung',
              'pending', now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n
       JOIN imaging_study s ON s.study_instance_uid = '2.25.' || (1000000000 + n)
       JOIN diagnostic_report d ON d.study_id = s.id""",
    """INSERT INTO charge_item (event_key, patient_id, catalog_entry_id, service_line, code, display, quantity,
                               unit_price_minor, total_minor, currency, service_reference, ai_attributed, status,
                               occurred_at, created_at)
       SELECT 'growth-scan:' || n, p.id, :entry, 'scan', :code, 'CT scan', 1, 20000, 20000, :currency,
              'ImagingStudy/growth-' || n, false, 'billable', now() - (n % 900) * interval '1 hour', now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n JOIN patient p ON p.mrn = 'G-' || n""",
    # Each record also has a booked follow-up scan (its own scheduled order, slot and appointment):
    # WORKLIST_PER_DAY a day at the demo centre's station, so the days grow with the data, as a
    # centre's history does, and a day's worklist stays the same size.
    """INSERT INTO referral (patient_id, requester_id, created_by_user_id, performer_organization_id, status, priority,
                             modality, body_part, procedure_description, reason, accession_number, created_at, updated_at)
       SELECT p.id, :requester, :clinician_user, :centre, 'scheduled', 'routine', 'CT', 'CHEST', 'CT chest follow-up',
              'follow-up', 'W' || n, now(), now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n JOIN patient p ON p.mrn = 'G-' || n""",
    f"""INSERT INTO slot (schedule_id, start, "end", status, version)
       SELECT :schedule, CAST(:first_day AS timestamp) + (n / {WORKLIST_PER_DAY}) * interval '1 day'
              + (n % {WORKLIST_PER_DAY}) * interval '15 minutes',
              CAST(:first_day AS timestamp) + (n / {WORKLIST_PER_DAY}) * interval '1 day'
              + (n % {WORKLIST_PER_DAY} + 1) * interval '15 minutes', 'busy', 1
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n""",
    f"""INSERT INTO appointment (slot_id, referral_id, patient_id, start, "end", status, description, booked_by_user_id,
                                 created_at)
       SELECT sl.id, r.id, r.patient_id, sl.start, sl."end", 'booked', 'CT chest follow-up', :clinician_user, now()
       FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS n
       JOIN referral r ON r.accession_number = 'W' || n
       JOIN slot sl ON sl.schedule_id = :schedule AND sl.start = CAST(:first_day AS timestamp)
            + (n / {WORKLIST_PER_DAY}) * interval '1 day' + (n % {WORKLIST_PER_DAY}) * interval '15 minutes'""",
]


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p99_ms: float


def make_database() -> tuple[Engine, str, str]:
    name = f"hospital_growth_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    return admin, name, url


def drop_database(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def load(engine: Engine, lo: int, hi: int, params: dict[str, object]) -> float:
    started = time.perf_counter()
    with engine.begin() as conn:
        for statement in LOAD:
            conn.execute(text(statement), {"lo": lo, "hi": hi, **params})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


def pydicom_read(path: Path) -> Any:
    import pydicom  # noqa: PLC0415

    return pydicom.dcmread(path)


def write_template_file(path: Path) -> None:
    """One real small CT file every loaded instance row points at: QIDO reads a header per study."""
    import numpy as np  # noqa: PLC0415
    import pydicom  # noqa: PLC0415

    from synthetic.dicom_factory import ct_series_datasets  # noqa: PLC0415

    [dataset] = ct_series_datasets(np.zeros((1, 32, 32), dtype=np.int16), patient_id="G-0", patient_name="Fam0^Given0",
                                   accession_number="G0", pixel_spacing_mm=1.0, slice_thickness_mm=5.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


def timed(samples: int, call: Callable[[int], None], loaded: int, rng: random.Random) -> Timing:
    durations = []
    call(rng.randint(1, loaded))  # warm
    for _ in range(samples):
        n = rng.randint(1, loaded)
        started = time.perf_counter()
        call(n)
        durations.append((time.perf_counter() - started) * 1000)
    durations.sort()
    return Timing(statistics.median(durations), durations[min(len(durations) - 1, int(len(durations) * 0.99))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--drop-index", action="append", default=[], metavar="NAME",
                        help="drop this index after migrating, to measure what it buys (repeatable)")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    admin, name, url = make_database()
    work = Path(tempfile.mkdtemp(prefix="growth-"))
    try:
        app = create_app({"DATABASE_URL": url, "REDIS_URL": None, "SECRET_KEY": "growth", "TESTING": True,
                          "INSTANCE_DIR": work, "DICOM_STORAGE_DIR": work / "dicom",
                          "LOGIN_ATTEMPTS_PER_MINUTE": 1_000_000, "API_REQUESTS_PER_MINUTE": 10_000_000})
        with app.app_context(), get_db().transaction() as session:
            demo: DemoSeed = seed_demo(session, app)
            entry = session.execute(text("SELECT id, code, currency FROM catalog_entry WHERE service_line = 'scan' "
                                         "ORDER BY id LIMIT 1")).one()
            station = session.execute(text("SELECT id, station_ae_title FROM schedule WHERE organization_id = :c "
                                           "ORDER BY id LIMIT 1"), {"c": demo.imaging_centre.id}).one()
            params = {"requester": demo.users["clinician"].practitioner_id, "clinician_user": demo.users["clinician"].id,
                      "centre": demo.imaging_centre.id, "entry": entry.id, "code": entry.code, "currency": entry.currency,
                      "schedule": station.id, "first_day": WORKLIST_FIRST_DAY}
            for index in args.drop_index:  # what an index buys, measured in the same run conditions
                session.execute(text(f'DROP INDEX "{index}"'))
            admin_id = demo.users["admin"].id
        write_template_file(work / "dicom" / "growth" / "template.dcm")
        engine = get_db(app).engine
        client = app.test_client()
        token = client.post("/api/auth/token", json={"username": "admin", "password": DEMO_PASSWORD}).get_json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}

        def patient_id(n: int) -> int:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT id FROM patient WHERE mrn = :m"), {"m": f"G-{n}"}).scalar_one())

        def get(path: str) -> None:
            response = client.get(path, headers=auth)
            assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:300])

        def invoice(n: int) -> None:
            from billing.service import issue_invoice  # noqa: PLC0415 - the app's stages load with it
            from hospital.models import User  # noqa: PLC0415
            with app.app_context():
                session = get_db().session()
                try:
                    user = session.get(User, admin_id)
                    assert user is not None
                    issue_invoice(session, user, patient_id(n))
                finally:
                    session.rollback()
                    session.close()

        def deep_patient_page(n: int) -> None:
            from hospital.fhir.paging import encode_cursor, search_binding  # noqa: PLC0415 - as invoice's imports
            from hospital.fhir.search import sort_keys  # noqa: PLC0415
            with app.app_context():
                mapping = app.extensions["hospital.fhir"].mappings["Patient"]
                cursor = encode_cursor(search_binding("Patient", []), sort_keys(mapping, []), [patient_id(n)])
            get(f"/fhir/Patient?_count=10&_cursor={cursor}")

        template = pydicom_read(work / "dicom" / "growth" / "template.dcm")

        def ingest(n: int) -> None:
            """One more image of record n's study arriving (what C-STORE and STOW-RS store): its
            order found by accession number, its study by UID, the instance row and file written."""
            from imaging_orders.archive.public import store_instance  # noqa: PLC0415 - as invoice's imports
            dataset = template.copy()
            dataset.PatientID, dataset.PatientName = f"G-{n}", f"Fam{n % 50000}^Given{n}"
            dataset.AccessionNumber = f"G{n}"
            dataset.StudyInstanceUID = f"2.25.{1000000000 + n}"
            dataset.SeriesInstanceUID = f"2.25.{uuid.uuid4().int}"
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = f"2.25.{uuid.uuid4().int}"
            result = store_instance(app, dataset, transfer_syntax_uid=None, calling_ae="GROWTH")
            assert result.study_id is not None

        def worklist(n: int) -> None:
            """A modality's C-FIND for the day of record n's booking at its station, answered whole."""
            from pydicom import Dataset  # noqa: PLC0415
            from pydicom.sequence import Sequence as DicomSequence  # noqa: PLC0415

            from imaging_orders.worklist import find_worklist_items  # noqa: PLC0415 - as invoice's imports
            day = date.fromisoformat(WORKLIST_FIRST_DAY) + timedelta(days=n // WORKLIST_PER_DAY)
            identifier, step = Dataset(), Dataset()
            identifier.PatientName = identifier.PatientID = identifier.AccessionNumber = ""
            step.ScheduledStationAETitle, step.Modality = station.station_ae_title, ""
            step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime = f"{day:%Y%m%d}", ""
            identifier.ScheduledProcedureStepSequence = DicomSequence([step])
            with app.app_context():
                session = get_db().session()
                try:
                    found = list(find_worklist_items(session, identifier))
                finally:
                    session.rollback()
                    session.close()
            assert found, (day, "no scheduled step found")

        operations: dict[str, Callable[[int], None]] = {
            "FHIR read Patient/{id}": lambda n: get(f"/fhir/Patient/{patient_id(n)}"),
            "FHIR search Observation?patient": lambda n: get(f"/fhir/Observation?patient={patient_id(n)}"),
            "FHIR search Patient?family": lambda n: get(f"/fhir/Patient?family=Fam{n % 50000}&_count=10"),
            "FHIR search ServiceRequest?patient": lambda n: get(f"/fhir/ServiceRequest?patient={patient_id(n)}"),
            "FHIR search Patient deep page (cursor)": deep_patient_page,
            "QIDO studies?PatientID": lambda n: get(f"/dicomweb/studies?PatientID=G-{n}"),
            "invoice for one patient": invoice,
            "ingest one image into a stored study": ingest,
            f"worklist C-FIND for one day ({WORKLIST_PER_DAY} steps)": worklist,
        }
        results: dict[int, dict[str, Timing]] = {}
        loaded = 0
        rng = random.Random(args.seed)
        for size in sizes:
            seconds = load(engine, loaded + 1, size, params)
            print(f"loaded {size:,} records ({size * INSTANCES_PER_STUDY:,} instances) in {seconds:.1f} s", flush=True)
            loaded = size
            results[size] = {label: timed(args.samples, call, loaded, rng) for label, call in operations.items()}
            for label, timing in results[size].items():
                print(f"  {label}: p50 {timing.p50_ms:.1f} ms, p99 {timing.p99_ms:.1f} ms", flush=True)
        print()
        print("| operation | " + " | ".join(f"{s:,}: p50 / p99 (ms)" for s in sizes) + f" | p50 {sizes[-1]:,} / {sizes[0]:,} |")
        print("|---|" + "---|" * (len(sizes) + 1))
        for label in operations:
            cells = [f"{results[s][label].p50_ms:.1f} / {results[s][label].p99_ms:.1f}" for s in sizes]
            ratio = results[sizes[-1]][label].p50_ms / results[sizes[0]][label].p50_ms
            print(f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f} |")
        if args.plot:
            plot(results, sizes, list(operations), args.plot)
    finally:
        get_db(app).engine.dispose() if "app" in locals() else None
        drop_database(admin, name)


def plot(results: dict[int, dict[str, Timing]], sizes: list[int], labels: list[str], path: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - only for --plot

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: PLC0415
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); no plot written")
        return
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for label in labels:
        axes.plot(sizes, [results[s][label].p50_ms for s in sizes], marker="o", label=label)
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("records (patients, referrals, studies, reports, observations, charge items each)")
    axes.set_ylabel("p50 latency (ms)")
    axes.set_title("How request latency grows with the data (in process, PostgreSQL)")
    axes.legend(fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
