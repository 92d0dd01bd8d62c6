"""C-FIND pending responses sent as pre-encoded bytes: a worklist day of 10,000 steps at the speed
of the network, not of per-message encoding.

pynetdicom turns every pending response into a DIMSE message whose command set and identifier it
encodes element by element (the command set twice, once for its group length), then sends the two
as separate P-DATA-TF PDUs, each a trip through its DUL thread's state machine: ~1.5 ms a step,
five times dcmtk's `wlmscpfs`. Every pending response to one request has the same command set (the
message it answers and the pending status do not change), so it is encoded once here, and each
identifier arrives already encoded (`imaging_orders.worklist`). Both travel as the two PDVs of one
P-DATA-TF PDU (PS3.8 9.3.5 lets a PDU carry several PDVs), fragmented for a peer whose maximum PDU
is smaller.

The PDUs are written to the association's socket by the handler's thread, many per `sendall`,
instead of one by one through the DUL thread (~0.1 ms of Python each). That is safe because nothing
else is sent on the association meanwhile: without asynchronous operations (pynetdicom negotiates
none) the peer sent this C-FIND after receiving the previous response whole, and the next thing
sent, the final response, is queued to the DUL only after `flush` has handed every pending one to
the kernel. Only an abort (server shutdown, a broken peer) could interleave, and it ends the
association anyway. A TLS socket is not written from two threads: there every PDU goes through
the DUL as pynetdicom sends it. The final response (success, cancel, failure) is pynetdicom's.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from ssl import SSLSocket
from typing import Any

from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA

logger = logging.getLogger(__name__)

C_FIND_RSP = 0x8020
DATA_SET_PRESENT = 0x0001  # CommandDataSetType: anything but 0x0101 (PS3.7 E.1)
# PDV message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment.
_COMMAND_LAST = b"\x03"
_DATA = b"\x00"
_DATA_LAST = b"\x02"
_PDV_OVERHEAD = 6  # item length (4), presentation context ID (1), control header (1)
# Responses handed to the DUL but not yet written to the socket: enough to keep it busy, few
# enough that a C-CANCEL is seen soon and a slow reader does not make us buffer a whole day.
MAXIMUM_QUEUED_PDUS = 256
# PDUs gathered before one `sendall`: a few dozen responses, so the peer starts reading early.
BATCH_BYTES = 64 * 1024


def _implicit_element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def pending_command_set(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """The C-FIND-RSP command set (implicit VR little endian, PS3.7 9.3.2.2 and E.1) of a pending
    response with an identifier."""
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"
    body = b"".join([
        _implicit_element(0x0000, 0x0002, uid),
        _implicit_element(0x0000, 0x0100, struct.pack("<H", C_FIND_RSP)),
        _implicit_element(0x0000, 0x0120, struct.pack("<H", message_id)),
        _implicit_element(0x0000, 0x0800, struct.pack("<H", DATA_SET_PRESENT)),
        _implicit_element(0x0000, 0x0900, struct.pack("<H", status)),
    ])
    return _implicit_element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def pdu_bytes(context_id: int, pdvs: list[bytes]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) holding `pdvs`, each its control header and data."""
    items = b"".join(struct.pack(">LB", len(pdv) + 1, context_id) + pdv for pdv in pdvs)
    return struct.pack(">BBL", 0x04, 0x00, len(items)) + items


class PendingResponses:
    """Sends the pending responses of the C-FIND request that `event` carries, on its association.
    Call `flush` before the handler yields or returns: the final response must follow them."""

    def __init__(self, event: Event, status: int) -> None:
        self._assoc: Any = event.assoc
        self._context_id = int(event.context.context_id)
        request = event.request
        self._command = _COMMAND_LAST + pending_command_set(
            str(request.AffectedSOPClassUID), int(request.MessageID), status
        )
        # The peer's Maximum Length Received bounds each P-DATA-TF PDU's PDVs (0: no limit).
        self._maximum = int(self._assoc.dimse.maximum_pdu_size or 0)
        association_socket = self._assoc.dul.socket
        raw = getattr(association_socket, "socket", None)
        self._direct: socket.socket | None = (
            raw if isinstance(raw, socket.socket) and not isinstance(raw, SSLSocket) else None
        )
        self._batch = bytearray()

    def send(self, identifier: bytes) -> bool:
        """Send (or gather) one pending response; False when the association is gone."""
        if not self._assoc.is_established:
            return False
        if self._direct is not None:
            for pdvs in self._pdus(identifier):
                self._batch += pdu_bytes(self._context_id, pdvs)
            return self.flush() if len(self._batch) >= BATCH_BYTES else True
        dul = self._assoc.dul
        while dul.to_provider_queue.qsize() >= MAXIMUM_QUEUED_PDUS:
            if not self._assoc.is_established:
                return False
            time.sleep(0.001)
        for pdvs in self._pdus(identifier):
            primitive = P_DATA()
            primitive.presentation_data_value_list = [[self._context_id, pdv] for pdv in pdvs]
            dul.send_pdu(primitive)
        return True

    def flush(self) -> bool:
        """Hand every gathered response to the kernel; False when the connection is gone."""
        if self._direct is None or not self._batch:
            return True
        try:
            self._direct.sendall(self._batch)
        except OSError as exc:
            # The connection is gone (or the peer stopped reading until the socket timed out):
            # the DUL finds out on its next read or write and ends the association.
            logger.warning("C-FIND responses not sent: %s", exc)
            self._batch.clear()
            return False
        self._batch.clear()
        return True

    def _pdus(self, identifier: bytes) -> Iterator[list[bytes]]:
        # Each PDV item: its length (4), the context ID (1), then the control header and data.
        whole = 5 + len(self._command) + 5 + 1 + len(identifier)
        if not self._maximum or whole <= self._maximum:
            yield [self._command, _DATA_LAST + identifier]
            return
        # A peer with a small maximum: the command alone, then the identifier in fragments.
        yield [self._command]
        room = self._maximum - _PDV_OVERHEAD
        for start in range(0, len(identifier), room):
            last = start + room >= len(identifier)
            yield [(_DATA_LAST if last else _DATA) + identifier[start:start + room]]
