"""HTTP hot paths (issue 18): the production web layout driven by wrk, side by side with a bare
Flask endpoint under the same gunicorn settings (the framework ceiling), in one run.

Run: `.venv/bin/python bench/http_hotpaths.py --duration 15 --runs 3` (needs `wrk`: Debian's `wrk`
package). It makes a throwaway PostgreSQL database (TEST_DATABASE_ADMIN_URL) and a Redis of its own,
seeds the demo plus 20 AI reports of 5 findings each for the demo patient, starts
`gunicorn -c deploy/gunicorn.conf.py` for `hospital.wsgi:app` and for `bench.bare_app:app` with the
same worker and thread counts, and drives each path with wrk: bearer token of the demo patient
(their own record), keep-alive connections. Ours and the bare app alternate run by run, so a noisy
machine slows both alike; the medians and the ratio of medians are what to quote.

Beside the rates, the CPU each request cost: the CPU time the server's processes (gunicorn's master
and workers) and, for ours, the database's backends serving the benchmark's database used during
the run, divided by the requests wrk counted. Unlike a rate, that figure hardly moves when other
work shares the cores, so it is the one to compare across runs on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from demo.closed_loop import free_port  # noqa: E402
from hospital.app import create_app  # noqa: E402
from hospital.db import get_db  # noqa: E402
from hospital.migrate import upgrade  # noqa: E402
from hospital.seed import DEMO_PASSWORD, seed_demo  # noqa: E402
from tests.chaos.processes import OwnRedis, hospital_env, stop_gracefully, wait_until  # noqa: E402
from tests.factories import make_preliminary_report  # noqa: E402

ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int
    cpu_ms_per_request: float = 0.0  # the server's (and its database backends') CPU per request
    db_cpu_ms_per_request: float = 0.0  # of which the database backends'


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time of each of these processes (all their threads), from /proc."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone
        times[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat)
    return times


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo.extend(int(child) for child in task.read_text().split())
    return pids


def run_wrk(url: str, seconds: float, connections: int, threads: int, token: str | None) -> WrkResult:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", url]
    if token:
        args[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk printed no {label}% latency:\n{out}")
        return float(match.group(1)) * UNITS_MS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    count = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
    return WrkResult(float(rate.group(1)), latency("50"), latency("99"), int(bad.group(1)) if bad else 0,
                     int(count.group(1)) if count else 0)


def measured(pids: Callable[[], tuple[list[int], list[int]]], run: Callable[[], WrkResult]) -> WrkResult:
    """`run`, with the CPU that the server's processes and its database backends (`pids`) spent
    per request during it (a process that appeared during the run counts whole)."""
    app_before, db_before = (cpu_seconds(group) for group in pids())
    result = run()
    app_after, db_after = (cpu_seconds(group) for group in pids())
    app = sum(t - app_before.get(pid, 0.0) for pid, t in app_after.items())
    db = sum(t - db_before.get(pid, 0.0) for pid, t in db_after.items())
    requests = max(result.requests, 1)
    return replace(result, cpu_ms_per_request=1000 * (app + db) / requests, db_cpu_ms_per_request=1000 * db / requests)


def server_pids(server: subprocess.Popen[bytes], admin: Engine, database: str | None) -> tuple[list[int], list[int]]:
    """The server's processes and, given its database, the PostgreSQL backends connected to it."""
    backends: list[int] = []
    if database is not None:
        with admin.connect() as conn:
            backends = [int(pid) for pid in conn.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                                                         {"d": database})]
    return process_tree(server.pid), backends


def start_gunicorn(app_path: str, port: int, env: dict[str, str], workers: int, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), app_path],
        env={**env, "WEB_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": str(workers), "WEB_THREADS": "4",
             "PYTHONPATH": str(ROOT)},
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
        except OSError:
            return False

    wait_until(f"gunicorn {app_path}", up, 60, 0.5)
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=3, help="runs per path and app (alternating)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("this benchmark drives the servers with wrk: install it (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    name = f"hospital_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    redis = OwnRedis()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(database_url)
        redis.start()
        env = hospital_env(database_url, redis.url, work / "dicom", work, SESSION_COOKIE_SECURE="false",
                           TRUSTED_PROXIES="0", LOGIN_ATTEMPTS_PER_MINUTE="100000")
        app = create_app({"DATABASE_URL": database_url, "REDIS_URL": redis.url, "INSTANCE_DIR": work})
        with app.app_context(), get_db(app).transaction() as session:
            demo = seed_demo(session, app)
            for _ in range(20):
                make_preliminary_report(session, demo, [(10 * n, 10 * n, 10 * n + 8, 10 * n + 8) for n in range(1, 6)])
            patient_id = demo.patient.id
        get_db(app).engine.dispose()

        ours_port, bare_port = free_port(), free_port()
        ours_server = start_gunicorn("hospital.wsgi:app", ours_port, env, args.web_workers, work / "ours.log")
        processes.append(ours_server)
        bare_server = start_gunicorn("bench.bare_app:app", bare_port, env, args.web_workers, work / "bare.log")
        processes.append(bare_server)
        request = urllib.request.Request(
            f"http://127.0.0.1:{ours_port}/api/auth/token", method="POST",
            data=f'{{"username": "patient", "password": "{DEMO_PASSWORD}"}}'.encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own local server
            token = __import__("json").loads(response.read())["access_token"]

        paths = {
            f"GET /fhir/Patient/{patient_id} (bearer)": (f"/fhir/Patient/{patient_id}", token),
            "GET /fhir/Observation?_count=10 (bearer)": ("/fhir/Observation?_count=10", token),
            "GET /fhir/metadata (no auth)": ("/fhir/metadata", None),
        }
        rows = []
        for label, (path, bearer) in paths.items():
            ours: list[WrkResult] = []
            bare: list[WrkResult] = []
            for _ in range(args.runs):
                for server, port, results, backends in ((ours_server, ours_port, ours, True),
                                                        (bare_server, bare_port, bare, False)):
                    pids = partial(server_pids, server, admin, name if backends else None)
                    run = partial(run_wrk, f"http://127.0.0.1:{port}{path}", args.duration, args.connections,
                                  args.wrk_threads, bearer)
                    results.append(measured(pids, run))
            if any(r.non_2xx for r in ours):
                raise RuntimeError(f"{label}: our server answered non-2xx: {[r.non_2xx for r in ours]}")

            def med(results: list[WrkResult], attribute: str) -> float:
                return statistics.median(getattr(r, attribute) for r in results)

            rows.append((label, med(ours, "requests_per_s"), med(ours, "p50_ms"), med(ours, "p99_ms"),
                         med(bare, "requests_per_s"), med(bare, "p50_ms"), med(bare, "p99_ms"),
                         med(ours, "cpu_ms_per_request"), med(bare, "cpu_ms_per_request"),
                         med(ours, "db_cpu_ms_per_request"),
                         [round(r.requests_per_s) for r in ours], [round(r.requests_per_s) for r in bare]))
        load = os.getloadavg()
        print(f"\nwrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:.0f}s, {args.runs} runs each, "
              f"gunicorn {args.web_workers} workers x 4 threads; load average at the end {load[0]:.1f} {load[1]:.1f}")
        print("| path | ours req/s | ours p50 ms | ours p99 ms | bare req/s | bare p50 ms | bare p99 ms "
              "| ours / bare (req/s) | p50 ours / bare | CPU ms/request ours (app + db) | of which db | bare "
              "| CPU ours / bare |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, o_rate, o_p50, o_p99, b_rate, b_p50, b_p99, o_cpu, b_cpu, o_db, _o_runs, _b_runs in rows:
            print(f"| {label} | {o_rate:.0f} | {o_p50:.1f} | {o_p99:.1f} | {b_rate:.0f} | {b_p50:.1f} | {b_p99:.1f} "
                  f"| {o_rate / b_rate:.2f} | {o_p50 / b_p50:.1f} | {o_cpu:.2f} | {o_db:.2f} | {b_cpu:.2f} "
                  f"| {o_cpu / b_cpu:.1f} |")
        for label, *_rest, o_runs, b_runs in rows:
            print(f"runs req/s {label}: ours {o_runs}, bare {b_runs}")
        print(f"server logs: {work}")
        return 0
    finally:
        for process in processes:
            stop_gracefully(process)
        redis.stop()
        time.sleep(0.5)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    raise SystemExit(main())
