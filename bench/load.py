"""Load and chaos benchmark: sustained referral + booking + DICOM ingest + AI traffic against the
production process layout (gunicorn, `hospital dicom`, RQ workers per queue) on one machine,
with chaos injected while it runs (a worker SIGKILLed mid-job, our own Redis restarted empty),
then a reconciliation that counts lost studies, duplicate reports and duplicate charges.

Run: `.venv/bin/python bench/load.py --duration 300 --clients 2` (appends to bench/RESULTS.md with
`--record`). It uses a throwaway database on the PostgreSQL in TEST_DATABASE_ADMIN_URL and a Redis
of its own; it never touches the shared Redis. Every loop is bounded; it stops by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from ai_services.models import DiagnosticReport  # noqa: E402
from demo.closed_loop import free_port, wait_for_dicom  # noqa: E402
from hospital.app import create_app  # noqa: E402
from hospital.db import get_db  # noqa: E402
from hospital.migrate import upgrade  # noqa: E402
from hospital.models import JobRecord, JobStatus  # noqa: E402
from hospital.seed import seed_demo  # noqa: E402
from imaging_orders.archive.models import ImagingStudy  # noqa: E402
from tests.chaos.load_client import AE_TITLE, Stats, client_loop, percentile, reconcile, record_section  # noqa: E402
from tests.chaos.processes import OwnRedis, hospital_env, kill_hard, start_worker, stop_gracefully, wait_until  # noqa: E402

logger = logging.getLogger("bench.load")
ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--clients", type=int, default=2, help="concurrent client loops")
    parser.add_argument("--slices", type=int, default=16, help="CT slices per study")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--ai-workers", type=int, default=1, help="`hospital worker --queue ai` processes")
    parser.add_argument("--drain-timeout", type=float, default=240, help="seconds to wait for the queues to empty")
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    name = f"hospital_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    redis = OwnRedis()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stats = Stats()
    try:
        upgrade(database_url)
        redis.start()
        env = hospital_env(database_url, redis.url, work / "dicom", work, JOB_SWEEP_SECONDS="5",
                           JOB_SWEEP_AFTER_SECONDS="10", JOB_TIMEOUT_SECONDS="60", STUDY_QUIET_SECONDS="2",
                           LOGIN_ATTEMPTS_PER_MINUTE="100000")
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "DICOM_STORAGE_DIR", "SECRET_KEY")})
        app = create_app({"DATABASE_URL": database_url, "REDIS_URL": redis.url, "INSTANCE_DIR": work})
        with app.app_context(), get_db(app).transaction() as session:
            seed = seed_demo(session, app)
            ids = {"patient": seed.patient.id, "centre": seed.imaging_centre.id, "mrn": seed.patient.mrn,
                   "name": seed.patient.dicom_name}
        get_db(app).engine.dispose()
        web_port, dicom_port = free_port(), free_port()
        log = open(work / "servers.log", "ab")  # noqa: SIM115
        processes["web"] = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "hospital.wsgi:app"],
            env={**env, "WEB_BIND": f"127.0.0.1:{web_port}", "WEB_WORKERS": str(args.web_workers)}, cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes["dicom"] = subprocess.Popen(
            [sys.executable, "-m", "hospital.cli", "dicom", "--host", "127.0.0.1", "--port", str(dicom_port),
             "--ae-title", AE_TITLE], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes["ai"] = start_worker(env, "ai", log=work / "workers.log")
        for extra in range(1, args.ai_workers):  # only the first is the chaos victim
            processes[f"ai{extra + 1}"] = start_worker(env, "ai", log=work / "workers.log")
        processes["other"] = start_worker(env, "billing", "notify", "default", log=work / "workers.log")
        base = f"http://127.0.0.1:{web_port}"

        def web_up() -> bool:
            try:
                return urllib.request.urlopen(base + "/healthz", timeout=2).status == 200
            except OSError:
                return False

        wait_until("gunicorn", web_up, 60, 0.5)
        wait_for_dicom("127.0.0.1", dicom_port, AE_TITLE)

        started = time.monotonic()
        deadline = started + args.duration
        threads = [threading.Thread(target=client_loop, args=(base, dicom_port, ids, deadline, stats, work,
                                                              args.slices, i), daemon=True)
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()

        def chaos() -> None:
            time.sleep(args.duration / 3)
            logger.info("chaos: SIGKILL the AI worker")
            kill_hard(processes["ai"])
            stats.events.append(f"t={time.monotonic() - started:.0f}s SIGKILL of the AI worker (and its work horse)")
            processes["ai"] = start_worker(env, "ai", log=work / "workers.log")
            time.sleep(args.duration / 3)
            logger.info("chaos: restart Redis empty")
            redis.restart_empty()
            stats.events.append(f"t={time.monotonic() - started:.0f}s Redis killed and restarted empty")

        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        for thread in threads:
            thread.join(args.duration + 120)
        chaos_thread.join(5)
        load_seconds = time.monotonic() - started
        logger.info("load done after %.0f s; draining", load_seconds)

        engine = create_engine(database_url)

        def drained() -> bool:
            with engine.connect() as conn:
                open_jobs = conn.scalar(select(func.count()).select_from(JobRecord)
                                        .where(JobRecord.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])))
                studies = conn.scalar(select(func.count()).select_from(ImagingStudy))
                reports = conn.scalar(select(func.count()).select_from(DiagnosticReport))
            return open_jobs == 0 and studies == reports

        drain_started = time.monotonic()
        try:
            wait_until("the queues to drain", drained, args.drain_timeout, 2)
        except TimeoutError:
            stats.events.append("drain timed out")
        drain_seconds = time.monotonic() - drain_started
        engine.dispose()
        result = reconcile(database_url, stats.accessions_sent)
        # Latency of HTTP API calls; a whole study's C-STORE is reported on its own line.
        all_latencies = [v for k, values in stats.latencies.items() if k not in ("C-STORE study", "login") for v in values]
        summary = {
            "duration_s": round(load_seconds), "clients": args.clients, "requests": stats.requests,
            "http_failures_5xx_or_io": len(stats.failures), "booking_conflicts_409": stats.conflicts,
            "instances_sent": stats.instances_sent, "p50_ms": round(statistics.median(all_latencies) * 1000, 1) if all_latencies else 0,
            "p99_ms": round(percentile(all_latencies, 0.99) * 1000, 1),
            "p99_ms_by_call": {k: round(percentile(v, 0.99) * 1000, 1) for k, v in sorted(stats.latencies.items())},
            "drain_s": round(drain_seconds), "chaos": stats.events, "reconciliation": result,
            "failures_sample": stats.failures[:10],
        }
        print(json.dumps(summary, indent=2))
        if args.record:
            record(summary, args)
        ok = result["lost_studies"] == 0 and result["duplicate_reports"] == 0 and result["duplicate_charges"] == 0
        return 0 if ok else 1
    finally:
        for process in processes.values():
            stop_gracefully(process, timeout=15)
        redis.stop()
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def record(summary: dict[str, Any], args: argparse.Namespace) -> None:
    """Replace this benchmark's section of bench/RESULTS.md, leaving the other sections alone."""
    r = summary["reconciliation"]
    lines = [
        "## Load and chaos", "",
        f"`bench/load.py` (run: `.venv/bin/python bench/load.py --duration {args.duration:.0f} --clients {args.clients} "
        f"--ai-workers {args.ai_workers} --drain-timeout {args.drain_timeout:.0f} --record`).",
        "Production layout on this 2-CPU machine: gunicorn (`deploy/gunicorn.conf.py`, "
        f"{args.web_workers} workers x 4 threads), `hospital dicom`, {args.ai_workers} AI worker(s) and one billing+notify+default worker, "
        "fresh PostgreSQL database, a Redis of the benchmark's own. Each client loop: referral, acceptance, slot search, "
        f"booking, worklist, then a {args.slices}-slice CT study over one DICOM association; the AI reads every study, "
        "billing charges scan and AI.", "",
        "| load | requests | 5xx / I/O failures | API p50 | API p99 | studies sent | instances | booking 409s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['duration_s']} s, {summary['clients']} clients | {summary['requests']} | {summary['http_failures_5xx_or_io']} | "
        f"{summary['p50_ms']} ms | {summary['p99_ms']} ms | {r['studies_sent']} | {summary['instances_sent']} | "
        f"{summary['booking_conflicts_409']} |", "",
        "Chaos during the run: " + "; ".join(summary["chaos"]) + ".", "",
        ("Reconciliation when the drain timed out, work still queued "
         if "drain timed out" in summary["chaos"] else "Reconciliation after the queues drained ")
        + f"({summary['drain_s']} s): lost studies **{r['lost_studies']}**, duplicate reports **{r['duplicate_reports']}**, "
        f"duplicate charges **{r['duplicate_charges']}**; {r['studies_received']} studies received, "
        f"{r['studies_with_report']} with a report, {r['scan_charges']} scan and {r['ai_charges']} AI charges; "
        f"job records {r['jobs']}.", "",
        "p99 per call (ms): " + ", ".join(f"{k} {v}" for k, v in summary["p99_ms_by_call"].items()) + ".", "",
    ]
    record_section(ROOT / "bench" / "RESULTS.md", "## Load and chaos", lines)


if __name__ == "__main__":
    sys.exit(main())
