"""The closed loop run inside the test process: the DICOM node in a thread and jobs inline, so every
log line and every metric of the loop is this process's (tests/hospital/test_observability.py,
tests/hospital/test_backup_drill.py)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from demo.closed_loop import LoopSummary, free_port, run_closed_loop, send_with_pynetdicom
from hospital.db import get_db
from hospital.seed import seed_demo
from imaging_orders.archive.dicom_server import start_dicom_server

AE_TITLE = "HOSPITAL"


def run_loop_in_process(app: Flask, work_dir: Path) -> tuple[LoopSummary, str, str]:
    """Seed, run one whole loop; returns the summary and the demo patient's MRN and DICOM name."""
    with app.app_context():
        with get_db(app).transaction() as session:
            seed = seed_demo(session, app)
            ids = (seed.imaging_centre.id, seed.patient.id, seed.pharmacy.id, seed.patient.mrn, seed.patient.dicom_name)
        port = free_port()
        server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=AE_TITLE, block=False)
        assert server is not None
        try:
            summary = run_closed_loop(
                app.test_client(),
                send_study=lambda files: send_with_pynetdicom("127.0.0.1", port, AE_TITLE, files),
                drain_jobs=lambda: None, work_dir=work_dir, imaging_centre_id=ids[0], patient_id=ids[1],
                pharmacy_id=ids[2], patient_mrn=ids[3], patient_dicom_name=ids[4], timeout=180,
            )
        finally:
            server.shutdown()
    return summary, ids[3], ids[4]
