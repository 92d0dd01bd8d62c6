"""Retrieving a study whose instances are stored in several transfer syntaxes (uncompressed, RLE
Lossless, JPEG 2000 Lossless): every instance reaches a peer over C-GET and C-MOVE, as stored when
the peer accepts that syntax, decompressed when it accepts only uncompressed."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom.transport import ThreadedAssociationServer

from hospital.db import get_db
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.query_retrieve import StoredFile, _storage_contexts
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import small_ct_study
from tests.imaging_orders.test_dicom_peers import free_port, run_tool

NODE_AE = "TSNODE"
DEST_AE = "TSVIEWER"
SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless)


@dataclass
class MixedNode:
    app: Flask
    port: int
    dest_port: int
    study_uid: str
    pixels: dict[str, np.ndarray]  # SOP Instance UID -> the pixels sent
    syntax: dict[str, str]  # SOP Instance UID -> the syntax stored


@pytest.fixture()
def mixed_node(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MixedNode]:
    """A node holding one 9-instance CT study: 3 uncompressed, 3 RLE Lossless, 3 JPEG 2000 Lossless."""
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    dest_port = free_port()
    app = make_test_app(live_database, tmp_path / "instance", STUDY_QUIET_SECONDS=60, DICOM_QR_TRUSTED_AES="GETSCU,MOVESCU",
                        DICOM_MOVE_DESTINATIONS=f"{DEST_AE}=127.0.0.1:{dest_port}")
    study_uid = generate_uid()
    datasets = small_ct_study(patient_id=f"TS{uuid.uuid4().hex[:6].upper()}", accession_number="TSACC",
                              n_slices=9, study_uid=study_uid)
    pixels: dict[str, np.ndarray] = {}
    syntax: dict[str, str] = {}
    for index, ds in enumerate(datasets):
        pixels[ds.SOPInstanceUID] = ds.pixel_array.copy()
        target = SYNTAXES[index % 3]
        if target != ExplicitVRLittleEndian:
            ds.compress(target, generate_instance_uid=False)
        syntax[ds.SOPInstanceUID] = str(target)
        store_instance(app, ds, transfer_syntax_uid=str(target), calling_ae="MODALITY")
    port = free_port()
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
    assert isinstance(server, ThreadedAssociationServer)
    try:
        yield MixedNode(app, port, dest_port, study_uid, pixels, syntax)
    finally:
        server.shutdown()
        get_db(app).engine.dispose()


def _check_received(node: MixedNode, folder: Path, *, kept_compressed: bool) -> None:
    received = [pydicom.dcmread(p) for p in folder.iterdir()]
    assert len(received) == 9
    for ds in received:
        sent = node.syntax[ds.SOPInstanceUID]
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if kept_compressed:
            assert syntax == sent
        else:
            assert not pydicom.uid.UID(syntax).is_compressed
        assert np.array_equal(ds.pixel_array, node.pixels[ds.SOPInstanceUID])


def test_getscu_accepting_only_uncompressed_gets_every_instance_decompressed(mixed_node: MixedNode, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    run_tool(["getscu", "-S", "-aet", "GETSCU", "-aec", NODE_AE, "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={mixed_node.study_uid}", "127.0.0.1", str(mixed_node.port)])
    _check_received(mixed_node, out, kept_compressed=False)


@pytest.mark.parametrize("accept_all", [False, True], ids=["uncompressed-only", "every-syntax"])
def test_movescu_gets_every_instance(mixed_node: MixedNode, tmp_path: Path, accept_all: bool) -> None:
    out = tmp_path / "moved"
    out.mkdir()
    receiver = subprocess.Popen(["storescp", *(["+xa"] if accept_all else []), "-aet", DEST_AE, "-od", str(out),
                                 str(mixed_node.dest_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        run_tool(["movescu", "-S", "-aet", "MOVESCU", "-aec", NODE_AE, "-aem", DEST_AE, "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={mixed_node.study_uid}", "127.0.0.1", str(mixed_node.port)])
    finally:
        receiver.terminate()
        receiver.wait(10)
    _check_received(mixed_node, out, kept_compressed=accept_all)


def test_move_proposes_one_context_per_class_and_syntax_plus_uncompressed(tmp_path: Path) -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    files = [StoredFile(tmp_path / f"{n}.dcm", sop, syntax) for n, (sop, syntax) in enumerate(
        [(ct, RLELossless), (ct, JPEG2000Lossless), (ct, RLELossless), (mr, ExplicitVRLittleEndian)])]
    contexts = {(str(c.abstract_syntax), tuple(str(t) for t in c.transfer_syntax)) for c in _storage_contexts(files)}
    uncompressed = (str(ExplicitVRLittleEndian), "1.2.840.10008.1.2")
    assert contexts == {
        (ct, (str(RLELossless),)), (ct, (str(JPEG2000Lossless),)), (ct, uncompressed), (mr, uncompressed),
    }
