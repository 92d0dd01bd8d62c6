"""`hospital dicom --processes N`: N node processes share one port, the kernel spreads associations
across them, a child that dies is replaced, children that cannot start stop the node with a reason,
and SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, func, select

from imaging_orders.archive.models import ImagingInstance
from imaging_orders.archive.node_processes import NodeAddress, NodeProcessesFailed, _Children
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom
from tests.imaging_orders.test_dicom_peers import free_port, run_tool, wait_for

NODE_AE = "MULTINODE"


def children_of(pid: int) -> set[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(line) for line in found.stdout.split()}


def node_pids_serving(port: int, parent: int) -> set[int]:
    """The processes of this node listening on `port` (each with its own socket: SO_REUSEPORT)."""
    listening = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", listening)}
    return pids & ({parent} | children_of(parent))


@pytest.fixture()
def started(live_database: str, tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": live_database, "HOSPITAL_INSTANCE_DIR": str(tmp_path),
           "DICOM_STORAGE_DIR": str(tmp_path / "dicom"), "SECRET_KEY": "test-secret", "REDIS_URL": ""}
    command = [sys.executable, "-m", "flask", "--app", "hospital.app:create_app", "dicom", "--host", "127.0.0.1",
               "--port", str(port), "--ae-title", NODE_AE, "--processes", "2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(node_pids_serving(port, process.pid)) == 2, timeout=60)
    return process, port


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return output


def test_two_processes_share_the_port_and_every_instance_is_kept(
    started: tuple[subprocess.Popen[str], int], live_database: str, tmp_path: Path
) -> None:
    process, port = started
    files = write_ct_series(make_ct_phantom(5, n_slices=12, size=32), tmp_path / "ct", patient_id="MP-1",
                            patient_name="Multi^Pat", accession_number="MPACC")
    try:
        # One association per file: the kernel hashes each new connection to one of the listeners.
        for path in files:
            run_tool(["storescu", "-aec", NODE_AE, "127.0.0.1", str(port), str(path)])
        # A child killed outright is replaced, and the port keeps answering meanwhile.
        [child] = children_of(process.pid) & node_pids_serving(port, process.pid)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: len(node_pids_serving(port, process.pid)) == 2 and child not in children_of(process.pid),
                 timeout=60)
        run_tool(["echoscu", "-aec", NODE_AE, "127.0.0.1", str(port)])
    finally:
        output = stop(process)
    assert process.returncode == 0, output
    assert "exited with status -9" in output
    assert children_of(process.pid) == set()

    engine = create_engine(live_database)
    with engine.connect() as conn:
        kept = set(conn.scalars(select(ImagingInstance.sop_instance_uid)))
        assert conn.scalar(select(func.count()).select_from(ImagingInstance)) == len(files)
    engine.dispose()
    assert kept == {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files}


def test_children_that_cannot_start_stop_the_node_with_a_reason() -> None:
    children = _Children("no_such_module_here:create_app", NodeAddress("127.0.0.1", free_port(), None))
    children.start_one()
    deadline = time.monotonic() + 120
    with pytest.raises(NodeProcessesFailed, match="exited 3 times"):
        while time.monotonic() < deadline:
            children.replace_exited()
            time.sleep(0.2)
    children.stop_all()
    assert children.running == []
