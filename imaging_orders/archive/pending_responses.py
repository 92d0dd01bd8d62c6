"""C-FIND pending responses sent as pre-encoded bytes: a worklist day of 10,000 steps at the speed
of the network, not of per-message encoding.

pynetdicom turns every pending response into a DIMSE message whose command set and identifier it
encodes element by element (the command set twice, once for its group length), then sends the two
as separate P-DATA-TF PDUs through its state machine: ~1.5 ms a step, five times dcmtk's
`wlmscpfs`. Every pending response to one request has the same command set (the message it
answers and the pending status do not change), so it is encoded once here, and each identifier arrives already encoded (`imaging_orders.worklist`). Both travel as the
two PDVs of one P-DATA-TF PDU (PS3.8 9.3.5 lets a PDU carry several PDVs), handed to the
association's DUL like any other P-DATA, so pynetdicom's state machine, timeouts and abort
handling stay in charge of the connection. The final response (success, cancel, failure) is left
to pynetdicom.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
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


class PendingResponses:
    """Sends the pending responses of the C-FIND request that `event` carries, on its association."""

    def __init__(self, event: Event, status: int) -> None:
        self._assoc: Any = event.assoc
        self._context_id = int(event.context.context_id)
        request = event.request
        self._command = _COMMAND_LAST + pending_command_set(
            str(request.AffectedSOPClassUID), int(request.MessageID), status
        )
        # The peer's Maximum Length Received bounds each P-DATA-TF PDU's PDVs (0: no limit).
        self._maximum = int(self._assoc.dimse.maximum_pdu_size or 0)

    def send(self, identifier: bytes) -> bool:
        """Queue one pending response; False when the association is gone (nothing more to send)."""
        dul = self._assoc.dul
        while dul.to_provider_queue.qsize() >= MAXIMUM_QUEUED_PDUS:
            if not self._assoc.is_established:
                return False
            time.sleep(0.001)
        if not self._assoc.is_established:
            return False
        for pdvs in self._pdus(identifier):
            primitive = P_DATA()
            primitive.presentation_data_value_list = [[self._context_id, pdv] for pdv in pdvs]
            dul.send_pdu(primitive)
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
