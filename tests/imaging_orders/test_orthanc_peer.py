"""A peer archive forwarding to us: Debian's Orthanc receives a study over its REST API and is
asked to send it to our node by C-STORE; the node must have stored and matched it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hospital.db import get_db
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from tests.imaging_orders.dicom_payloads import part10, small_ct_study
from tests.imaging_orders.factories import Order
from tests.imaging_orders.test_dicom_peers import NODE_AE, Node, free_port, node, order  # noqa: F401 - fixtures

ORTHANC = Path("/usr/sbin/Orthanc")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ORTHANC.exists(), reason="Debian's orthanc package (/usr/sbin/Orthanc) is not installed"),
]


def orthanc_config(storage: Path, http_port: int, dicom_port: int, node_port: int) -> dict[str, Any]:
    return {
        "Name": "PeerArchive", "StorageDirectory": str(storage / "storage"), "IndexDirectory": str(storage / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "PEERPACS", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [], "HttpServerEnabled": True, "DicomServerEnabled": True,
        "DicomModalities": {"hospital": [NODE_AE, "127.0.0.1", node_port]}, "StableAge": 3600,
    }


@pytest.fixture()
def orthanc(node: Node, tmp_path: Path) -> Iterator[str]:  # noqa: F811 - pytest fixture injection
    http_port, dicom_port = free_port(), free_port()
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(tmp_path / "orthanc", http_port, dicom_port, node.port)))
    process = subprocess.Popen([str(ORTHANC), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/system", timeout=1).read()
                break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"Orthanc did not start: {process.stderr.read().decode()[-2000:] if process.stderr else ''}") from exc
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(tmp_path / "orthanc", ignore_errors=True)


def post(url: str, body: bytes, content_type: str) -> Any:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_orthanc_forwards_a_study_to_us(orthanc: str, node: Node, order: Order) -> None:  # noqa: F811
    datasets = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=4, series=2)
    study_ids = {post(f"{orthanc}/instances", part10(ds), "application/dicom")["ParentStudy"] for ds in datasets}
    assert len(study_ids) == 1

    job = post(f"{orthanc}/modalities/hospital/store",
               json.dumps({"Resources": list(study_ids), "Synchronous": True}).encode(), "application/json")
    assert job.get("FailedInstancesCount", 0) == 0, job

    with get_db(node.app).session() as session:
        study = session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == datasets[0].StudyInstanceUID))
        assert study is not None and study.referral_id == order.referral.id
        count = session.scalar(select(func.count()).select_from(ImagingInstance).join(ImagingSeries)
                               .where(ImagingSeries.study_id == study.id))
    assert count == 8
