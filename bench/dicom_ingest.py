"""Benchmark of the DICOM node against Orthanc and dcmtk on the same machine, in the same run.

1. C-STORE ingest: N CT instances of 512x512 16-bit sent by dcmtk's `storescu` over one and over
   four associations (four storescu processes), to our node (`flask dicom`, separate processes
   on a fresh PostgreSQL database: one, and `--processes 2` sharing the port) and to Debian's
   Orthanc; instances/s and MB/s, median of runs.
   Each run starts from empty storage (our tables truncated, Orthanc restarted on a new folder).
2. Worklist C-FIND latency with W scheduled steps: `findscu -W` against our node, and against
   dcmtk's `wlmscpfs` serving the very same items (our node's responses, saved as .wl files);
   one query matching a single step (by AccessionNumber) and one matching all of them.
3. WADO-RS frame retrieval with transcoding: F single-frame 512x512 16-bit CT instances stored as
   RLE Lossless and as JPEG 2000 Lossless, each frame asked as uncompressed octet-stream (explicit VR
   little endian: the server decodes) and as stored (`transfer-syntax=*`), through the app in
   process (Werkzeug's test client: no HTTP server, so this is the app's own cost); frames/s.
   Debian's Orthanc 1.10 has no DICOMweb plugin here, so this one is ours alone.

Usage: .venv/bin/python bench/dicom_ingest.py [--n 2000] [--runs 3] [--worklist 10000] [--frames 100]
Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hospital.db import get_db  # noqa: E402
from hospital.migrate import upgrade  # noqa: E402
from synthetic.dicom_factory import ct_series_datasets  # noqa: E402

logger = logging.getLogger(__name__)

ADMIN_URL = os.environ.get("BENCH_DATABASE_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NODE_AE = "BENCHNODE"
ORTHANC = "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def bench_database() -> Iterator[str]:
    name = f"hospital_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = str(admin.url.set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def write_instances(folder: Path, n: int) -> int:
    """N CT slices of 512x512 16-bit in one study, one file each; returns the total bytes."""
    folder.mkdir(parents=True)
    volume = np.random.default_rng(7).integers(-1000, 1500, size=(1, 512, 512)).astype(np.float32)
    [template] = ct_series_datasets(volume, patient_id="BENCH-1", patient_name="Bench^Mark", accession_number="BENCHACC")
    total = 0
    for i in range(n):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = i + 1
        path = folder / f"{i:05d}.dcm"
        pydicom.dcmwrite(path, template, enforce_file_format=True)
        total += path.stat().st_size
    return total


def send(folder: Path, port: int, called_ae: str, associations: int) -> float:
    """Seconds for storescu to send every file in `folder` over `associations` processes."""
    files = sorted(folder.iterdir())
    shares = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(["storescu", "-aet", "BENCHSCU", "-aec", called_ae, "127.0.0.1", str(port), *map(str, share)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for share in shares
    ]
    for process in processes:
        _, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed (exit status {process.returncode}): {err.decode()[-500:]}")
    return time.perf_counter() - start


def wait_for_listeners(port: int, count: int, timeout: float = 120) -> None:
    """Until `count` processes listen on `port` (the node's children start after it does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if len(listening.splitlines()) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{count} node processes did not listen on {port} within {timeout:g}s")


@contextmanager
def our_node(database_url: str, storage: Path, processes: int = 1) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "HOSPITAL_INSTANCE_DIR": str(storage.parent),
           "DICOM_STORAGE_DIR": str(storage), "SECRET_KEY": "bench", "REDIS_URL": "", "LOG_LEVEL": "WARNING",
           "STUDY_QUIET_SECONDS": "3600"}
    # BENCH_LOG_DIR keeps each node's log (warnings and errors) for a run that went wrong.
    log_dir = os.environ.get("BENCH_LOG_DIR")
    log = open(Path(log_dir) / f"node-{port}.log", "w") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "hospital.app:create_app", "dicom", "--host", "127.0.0.1",
         "--port", str(port), "--ae-title", NODE_AE, "--processes", str(processes)],
        env=env, stdout=log, stderr=log,
    )
    try:
        wait_for_port(port)
        if processes > 1:
            wait_for_listeners(port, processes)
        yield port
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def orthanc(folder: Path) -> Iterator[int]:
    http_port, dicom_port = free_port(), free_port()
    config = folder / "orthanc.json"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({
        "Name": "Bench", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [], "StableAge": 3600, "DicomCheckCalledAet": False,
    }))
    process = subprocess.Popen([ORTHANC, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(dicom_port)
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=10).read()
        yield dicom_port
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def truncate_images(database_url: str, storage: Path) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        # Ids go on (no RESTART IDENTITY): the record history (resource_version) of earlier runs'
        # studies is kept, and a reused id would collide with it.
        conn.execute(text("TRUNCATE imaging_instance, imaging_series, imaging_study CASCADE"))
    engine.dispose()
    shutil.rmtree(storage, ignore_errors=True)


def stored_count(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        count = int(conn.execute(text("SELECT count(*) FROM imaging_instance")).scalar_one())
    engine.dispose()
    return count


def bench_ingest(work: Path, n: int, runs: int, processes: list[int]) -> dict[str, dict[int, list[float]]]:
    """Seconds per run: ours with each number of node processes (key "ours-P"), and Orthanc, by
    number of associations; "bytes" holds the total size."""
    folder = work / "instances"
    total_bytes = write_instances(folder, n)
    results: dict[str, dict[int, list[float]]] = {"orthanc": {1: [], 4: []}}
    for count in processes:
        results[f"ours-{count}"] = {1: [], 4: []}
    with bench_database() as url:
        storage = work / "ours" / "dicom"
        for run in range(runs):
            for associations in (1, 4):
                line = [f"run {run + 1}: {associations} assoc:"]
                for count in processes:
                    truncate_images(url, storage)
                    with our_node(url, storage, count) as port:
                        seconds = send(folder, port, NODE_AE, associations)
                    stored = stored_count(url)
                    if stored != n:
                        raise RuntimeError(f"our node ({count} processes) indexed {stored} of {n} instances")
                    results[f"ours-{count}"][associations].append(seconds)
                    line.append(f"ours x{count} {seconds:.1f}s,")
                with orthanc(work / f"orthanc-{run}-{associations}") as port:
                    seconds = send(folder, port, "ORTHANC", associations)
                results["orthanc"][associations].append(seconds)
                print(" ".join([*line, f"orthanc {seconds:.1f}s"]), file=sys.stderr)
    results["bytes"] = {0: [float(total_bytes)]}
    return results


def populate_worklist(database_url: str, steps: int) -> str:
    """`steps` booked appointments today on one CT room; returns the day as YYYYMMDD."""
    from hospital.app import create_app  # the app factory reads config; imported late to keep startup quick
    from tests.imaging_orders.factories import make_centre, make_order

    app = create_app({"DATABASE_URL": database_url, "REDIS_URL": None, "SECRET_KEY": "bench", "TESTING": True})
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with app.app_context(), get_db(app).transaction() as session:
        centre = make_centre(session, station_ae_title="BENCHCT")
        for i in range(steps):
            # Two seconds apart from 06:00: 10,000 steps end before noon, all on one day.
            make_order(session, centre, mrn=f"WL-{i:06d}", accession_number=f"WL{i:08d}",
                       start=day.replace(hour=6) + timedelta(seconds=2 * i))
    get_db(app).engine.dispose()
    return day.strftime("%Y%m%d")


def findscu(port: int, called_ae: str, keys: list[str], out: Path | None = None) -> tuple[float, int]:
    args = ["findscu", "-W", "-aet", "BENCHSCU", "-aec", called_ae]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        args.append("-X")
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=out)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-500:])
    count = len(list(out.glob("rsp*.dcm"))) if out is not None else -1
    return seconds, count


def worklist_keys(day: str, accession: str = "") -> list[str]:
    """The key set of dcmtk's example worklist items: wlmscpfs serves only items holding all of it."""
    step = "ScheduledProcedureStepSequence[0]."
    return [
        f"AccessionNumber={accession}", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "MedicalAlerts",
        "Allergies", "StudyInstanceUID", "RequestingPhysician", "RequestedProcedureDescription",
        "RequestedProcedureID", "RequestedProcedurePriority",
        f"{step}ScheduledStationAETitle=BENCHCT", f"{step}ScheduledProcedureStepStartDate={day}",
        f"{step}ScheduledProcedureStepStartTime", f"{step}Modality", f"{step}RequestedContrastAgent",
        f"{step}ScheduledPerformingPhysicianName", f"{step}ScheduledProcedureStepDescription",
        f"{step}ScheduledProcedureStepID", f"{step}ScheduledStationName", f"{step}ScheduledProcedureStepLocation",
        f"{step}PreMedication", f"{step}CommentsOnTheScheduledProcedureStep",
    ]


def bench_worklist(work: Path, steps: int, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"ours_all": [], "ours_one": [], "wlm_all": [], "wlm_one": []}
    with bench_database() as url:
        started = time.perf_counter()
        day = populate_worklist(url, steps)
        print(f"worklist of {steps} populated in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        with our_node(url, work / "wl-ours" / "dicom") as port:
            export = work / "export"
            _, count = findscu(port, NODE_AE, worklist_keys(day), export)
            if count != steps:
                raise RuntimeError(f"our node answered {count} of {steps} steps")
            for _ in range(runs):
                results["ours_all"].append(findscu(port, NODE_AE, worklist_keys(day))[0])
                results["ours_one"].append(findscu(port, NODE_AE, worklist_keys(day, f"WL{steps // 2:08d}"))[0])
    wl_dir = work / "wlm" / "WLMAE"
    wl_dir.mkdir(parents=True)
    (wl_dir / "lockfile").touch()
    for i, rsp in enumerate(sorted(export.glob("rsp*.dcm"))):
        ds = pydicom.dcmread(rsp)
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
        pydicom.dcmwrite(wl_dir / f"item{i:06d}.wl", ds, enforce_file_format=True)
    port = free_port()
    process = subprocess.Popen(["wlmscpfs", "-dfp", str(work / "wlm"), str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        for _ in range(runs):
            results["wlm_all"].append(findscu(port, "WLMAE", worklist_keys(day))[0])
            results["wlm_one"].append(findscu(port, "WLMAE", worklist_keys(day, f"WL{steps // 2:08d}"))[0])
        _, count = findscu(port, "WLMAE", worklist_keys(day), work / "wlm-check")
        if count != steps:
            raise RuntimeError(f"wlmscpfs answered {count} of {steps} steps")
    finally:
        process.terminate()
        process.wait(30)
    return results


def bench_wado_frames(work: Path, frames: int, runs: int) -> dict[str, list[float]]:
    """Seconds to fetch every frame once, per (stored syntax, asked encoding), for each run."""
    from hospital.app import create_app  # imported late, as in populate_worklist
    from hospital.auth import issue_token
    from hospital.models import Role, User
    from imaging_orders.archive.ingest import store_instance

    volume = np.random.default_rng(11).integers(-1000, 1500, size=(frames, 512, 512)).astype(np.float32)
    datasets = ct_series_datasets(volume, patient_id="BENCH-F", patient_name="Bench^Frames", accession_number="BENCHF")
    results: dict[str, list[float]] = {}
    asks = {"uncompressed": 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
            "as stored": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    with bench_database() as url:
        app = create_app({"DATABASE_URL": url, "REDIS_URL": None, "SECRET_KEY": "bench", "TESTING": True,
                          "DICOM_STORAGE_DIR": str(work / "wado" / "dicom"), "STUDY_QUIET_SECONDS": 3600})
        with app.app_context(), get_db(app).transaction() as session:
            admin = User(username="bench-admin", password_hash="x", role=Role.ADMIN)
            session.add(admin)
            session.flush()
            token, _ = issue_token(session, admin, 3600)
        urls: dict[str, list[str]] = {}
        for syntax_name, syntax in (("RLE Lossless", pydicom.uid.RLELossless), ("JPEG 2000 Lossless", pydicom.uid.JPEG2000Lossless)):
            study_uid, series_uid = generate_uid(), generate_uid()
            for ds in datasets:
                copy = pydicom.dcmread(_part10_bytes(ds))
                copy.StudyInstanceUID, copy.SeriesInstanceUID = study_uid, series_uid
                copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                copy.compress(syntax, generate_instance_uid=False)
                store_instance(app, copy, transfer_syntax_uid=str(syntax), calling_ae="BENCH")
                urls.setdefault(syntax_name, []).append(
                    f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{copy.SOPInstanceUID}/frames/1")
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(runs):
            for syntax_name, frame_urls in urls.items():
                for ask_name, accept in asks.items():
                    start = time.perf_counter()
                    for frame_url in frame_urls:
                        response = client.get(frame_url, headers={**headers, "Accept": accept})
                        if response.status_code != 200:
                            raise RuntimeError(f"{frame_url}: {response.status_code} {response.get_data(as_text=True)[:300]}")
                    results.setdefault(f"{syntax_name}|{ask_name}", []).append(time.perf_counter() - start)
        get_db(app).engine.dispose()
    return results


def _part10_bytes(ds: pydicom.Dataset) -> BytesIO:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="CT instances per ingest run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worklist", type=int, default=10_000, help="scheduled procedure steps")
    parser.add_argument("--node-processes", default="1,2",
                        help="numbers of node processes to measure, comma-separated (hospital dicom --processes)")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-worklist", action="store_true")
    parser.add_argument("--frames", type=int, default=100, help="frames (instances) per stored syntax for WADO-RS")
    parser.add_argument("--skip-wado", action="store_true")
    args = parser.parse_args()
    lines = [f"Machine: {os.cpu_count()} CPUs; {datetime.now(UTC):%Y-%m-%d}; medians of {args.runs} runs.", ""]
    with tempfile.TemporaryDirectory(prefix="dicom-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_ingest:
            processes = [int(p) for p in args.node_processes.split(",")]
            ingest = bench_ingest(work, args.n, args.runs, processes)
            megabytes = ingest["bytes"][0][0] / 1e6
            lines += [f"### C-STORE ingest: {args.n} CT instances, 512x512 16-bit ({megabytes:.0f} MB), storescu", "",
                      "| associations | node processes | ours inst/s | ours MB/s | Orthanc inst/s | Orthanc MB/s | ours / Orthanc (speed) |",
                      "|---|---|---|---|---|---|---|"]
            for associations in (1, 4):
                theirs = statistics.median(ingest["orthanc"][associations])
                for count in processes:
                    ours = statistics.median(ingest[f"ours-{count}"][associations])
                    lines.append(f"| {associations} | {count} | {args.n / ours:.0f} | {megabytes / ours:.1f} | "
                                 f"{args.n / theirs:.0f} | {megabytes / theirs:.1f} | {theirs / ours:.2f} |")
            lines.append("")
            print("\n".join(lines), flush=True)  # kept even if the worklist part fails
            lines = []
        if not args.skip_worklist:
            wl = bench_worklist(work, args.worklist, args.runs)
            med = {k: statistics.median(v) for k, v in wl.items()}
            lines += [f"### Worklist C-FIND, {args.worklist} scheduled steps on one day and station (findscu -W, wall time incl. association)", "",
                      "| query | ours (s) | wlmscpfs (s) | ours / wlmscpfs |", "|---|---|---|---|",
                      f"| all {args.worklist} steps | {med['ours_all']:.2f} | {med['wlm_all']:.2f} | {med['ours_all'] / med['wlm_all']:.2f} |",
                      f"| one step by AccessionNumber | {med['ours_one']:.3f} | {med['wlm_one']:.3f} | {med['ours_one'] / med['wlm_one']:.2f} |",
                      ""]
            print("\n".join(lines), flush=True)
            lines = []
        if not args.skip_wado:
            frames = bench_wado_frames(work, args.frames, args.runs)
            lines += [f"### WADO-RS frames, {args.frames} single-frame 512x512 16-bit CT instances per stored syntax (in process)", "",
                      "| stored as | asked as | frames/s | ms per frame |", "|---|---|---|---|"]
            for key, seconds in frames.items():
                stored_as, asked_as = key.split("|")
                median = statistics.median(seconds)
                lines.append(f"| {stored_as} | {asked_as} | {args.frames / median:.0f} | {1000 * median / args.frames:.1f} |")
            lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
