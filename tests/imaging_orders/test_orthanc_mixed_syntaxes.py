"""Orthanc both ways with a study in mixed transfer syntaxes (explicit VR little endian, RLE
Lossless, JPEG 2000 Lossless): Debian's Orthanc sends it to our node by C-STORE, then, its own copy
deleted, retrieves it from us by C-MOVE (Orthanc's REST `/modalities/{id}/move`). Every instance
must arrive whole both times: pixel data equal to what was made, after decoding. Orthanc 1.10 has
no C-GET SCU (its REST `/modalities/{id}/get` came later), so C-GET with mixed syntaxes is covered
by dcmtk's getscu in test_retrieve_transfer_syntaxes.py.

Run once with an Orthanc that accepts every syntax (instances come back as stored) and once with
one that accepts only uncompressed ones (the node must decompress what it sends)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from sqlalchemy import select

from hospital.db import get_db
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.models import ImagingInstance
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import part10, small_ct_study
from tests.imaging_orders.test_dicom_peers import free_port
from tests.imaging_orders.test_orthanc_peer import ORTHANC, orthanc_config, post

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ORTHANC.exists(), reason="Debian's orthanc package (/usr/sbin/Orthanc) is not installed"),
]

NODE_AE = "MIXNODE"
ORTHANC_AE = "PEERPACS"  # orthanc_config's DicomAet
SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless)
_COMPRESSED_SYNTAX_OPTIONS = ("DeflatedTransferSyntaxAccepted", "JpegTransferSyntaxAccepted",
                              "Jpeg2000TransferSyntaxAccepted", "JpegLosslessTransferSyntaxAccepted",
                              "JpipTransferSyntaxAccepted", "Mpeg2TransferSyntaxAccepted", "RleTransferSyntaxAccepted")


@dataclass
class Peers:
    app: Flask
    orthanc: str  # REST base URL
    accepts_compressed: bool  # Orthanc accepts every syntax; else only uncompressed ones


@pytest.fixture(params=[True, False], ids=["orthanc-accepts-all", "orthanc-uncompressed-only"])
def peers(request: pytest.FixtureRequest, live_database: str, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Peers]:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    node_port, http_port, dicom_port = free_port(), free_port(), free_port()
    app = make_test_app(live_database, tmp_path / "instance", STUDY_QUIET_SECONDS=60, DICOM_QR_TRUSTED_AES=ORTHANC_AE,
                        DICOM_MOVE_DESTINATIONS=f"{ORTHANC_AE}=127.0.0.1:{dicom_port}")
    server = start_dicom_server(app, host="127.0.0.1", port=node_port, ae_title=NODE_AE, block=False)
    assert server is not None
    config = orthanc_config(tmp_path / "orthanc", http_port, dicom_port, node_port)
    config["DicomModalities"] = {"hospital": [NODE_AE, "127.0.0.1", node_port]}
    if not request.param:
        config.update(dict.fromkeys(_COMPRESSED_SYNTAX_OPTIONS, False))
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([str(ORTHANC), str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/system", timeout=1).read()
                break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Orthanc did not start") from exc
                time.sleep(0.2)
        yield Peers(app, base, request.param)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        server.shutdown()
        get_db(app).engine.dispose()
        shutil.rmtree(tmp_path / "orthanc", ignore_errors=True)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def test_orthanc_sends_and_retrieves_a_mixed_syntax_study_whole(peers: Peers) -> None:
    study_uid = generate_uid()
    datasets = small_ct_study(patient_id=f"MX{uuid.uuid4().hex[:6].upper()}", accession_number="MXACC",
                              n_slices=9, study_uid=study_uid)
    pixels: dict[str, np.ndarray] = {}
    made_syntax: dict[str, str] = {}
    orthanc_ids = set()
    for index, ds in enumerate(datasets):
        pixels[ds.SOPInstanceUID] = ds.pixel_array.copy()
        syntax = SYNTAXES[index % 3]
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, generate_instance_uid=False)
        made_syntax[ds.SOPInstanceUID] = str(syntax)
        orthanc_ids.add(post(f"{peers.orthanc}/instances", part10(ds), "application/dicom")["ParentStudy"])
    [orthanc_study] = orthanc_ids

    # Orthanc -> us by C-STORE.
    job = post(f"{peers.orthanc}/modalities/hospital/store",
               json.dumps({"Resources": [orthanc_study], "Synchronous": True}).encode(), "application/json")
    assert job.get("FailedInstancesCount", 0) == 0, job
    storage = Path(peers.app.config["DICOM_STORAGE_DIR"])
    with get_db(peers.app).session() as session:
        stored = {i.sop_instance_uid: storage / i.path for i in session.scalars(select(ImagingInstance))
                  if i.sop_instance_uid in pixels}
    assert set(stored) == set(pixels)
    for uid, path in stored.items():
        assert np.array_equal(pydicom.dcmread(path).pixel_array, pixels[uid]), uid

    # Orthanc forgets the study, then takes it back from us by C-MOVE.
    request = urllib.request.Request(f"{peers.orthanc}/studies/{orthanc_study}", method="DELETE")
    urllib.request.urlopen(request, timeout=30).read()
    assert json.loads(_get(f"{peers.orthanc}/studies")) == []
    post(f"{peers.orthanc}/modalities/hospital/move", json.dumps({
        "Level": "Study", "Resources": [{"StudyInstanceUID": study_uid}], "TargetAet": ORTHANC_AE,
    }).encode(), "application/json")

    instance_ids = json.loads(_get(f"{peers.orthanc}/instances"))
    assert len(instance_ids) == len(pixels)
    for orthanc_id in instance_ids:
        ds = pydicom.dcmread(BytesIO(_get(f"{peers.orthanc}/instances/{orthanc_id}/file")))
        uid = str(ds.SOPInstanceUID)
        assert np.array_equal(ds.pixel_array, pixels[uid]), uid
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if peers.accepts_compressed:
            assert syntax == made_syntax[uid], uid  # sent as stored
        else:
            assert not pydicom.uid.UID(syntax).is_compressed, uid  # decompressed by the node
