"""The DICOM node lets senders use large PDUs: a CT slice arrives in a few P-DATA PDUs, not 32."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.transport import ThreadedAssociationServer

from imaging_orders.archive.dicom_server import MAXIMUM_PDU_BYTES, build_ae, event_handlers


@pytest.fixture()
def node(app: Flask) -> Iterator[int]:
    ae = build_ae(app, "PDUNODE")
    server: ThreadedAssociationServer = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=event_handlers(app))
    yield int(server.server_address[1])
    server.shutdown()


def test_the_node_accepts_pdus_of_a_mebibyte(node: int) -> None:
    scu = AE(ae_title="PDUSCU")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", node, ae_title="PDUNODE")
    try:
        assert assoc.is_established
        # What a sender may put in one P-DATA PDU to us (pynetdicom's default was 16382).
        assert assoc.acceptor.maximum_length == MAXIMUM_PDU_BYTES == 1024 * 1024
    finally:
        assoc.release()
