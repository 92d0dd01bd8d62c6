"""Reading HL7 v2.5 messages (with python-hl7) and writing our acknowledgements.

`read_message` turns the bytes of one MLLP frame into a `ReceivedMessage` or raises
`MessageRefused` carrying the acknowledgement code (AR: not a message we read or support; AE: we
read it, but cannot apply it), the HL7 error code (table 0357), where the error is (ERR-2) and a
reason a person can act on. `build_ack` writes MSH + MSA (+ ERR) for either outcome, whether or
not the message had a readable MSH.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime

import hl7
from hl7.containers import Message

logger = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("2.5", "2.5.1")
# message type^trigger -> the segments it cannot do without.
REQUIRED_SEGMENTS: dict[str, tuple[str, ...]] = {
    "ORM^O01": ("PID", "ORC", "OBR"),
    "OMI^O23": ("PID", "ORC", "OBR"),
    "ADT^A01": ("PID",),
    "ADT^A04": ("PID",),
    "ADT^A08": ("PID",),
    "ADT^A40": ("PID", "MRG"),
}
# HL7 table 0357, the codes we use.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_VERSION = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_INTERNAL_ERROR = "207"
ERROR_TEXT = {
    "0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found", "200": "Unsupported message type",
    "201": "Unsupported event code", "203": "Unsupported version id", "204": "Unknown key identifier",
    "205": "Duplicate key identifier", "207": "Application internal error",
}
# Control characters that never occur in HL7 text (segments end with CR; LF is tolerated).
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A message with the standard delimiters, for its escape().
_ESCAPER = hl7.parse("MSH|^~\\&|")


class MessageRefused(Exception):
    """The message gets AE or AR, with nothing of it applied."""

    def __init__(self, ack_code: str, error_code: str, reason: str, location: str = "") -> None:
        super().__init__(reason)
        self.ack_code = ack_code
        self.error_code = error_code
        self.reason = reason
        self.location = location  # ERR-2: segment^sequence^field, e.g. "PID^1^3"


@dataclass(frozen=True)
class Header:
    """What an acknowledgement needs of the message's MSH (all empty when it had none)."""

    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    trigger: str = ""
    message_type: str = ""  # e.g. "ORM^O01"


@dataclass(frozen=True)
class ReceivedMessage:
    header: Header
    message: Message

    def get(self, path: str) -> str:
        """A field, component or repetition by python-hl7's accessor (`PID.F3.R1.C1`), unescaped;
        empty when absent."""
        try:
            return str(self.message[path]).strip()
        except (KeyError, IndexError, TypeError, ValueError):
            return ""

    def has(self, segment: str) -> bool:
        try:
            self.message.segment(segment)
        except KeyError:
            return False
        return True


def read_header(text: str) -> Header:
    """MSH as far as it can be read, to address an acknowledgement even to a refused message."""
    first = text.split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return Header()
    sep = first[3]
    fields = first.split(sep)
    # fields[0] is "MSH", fields[1] the encoding characters: MSH-n is fields[n - 1].
    def field(n: int) -> str:
        return fields[n - 1] if len(fields) >= n else ""
    component = fields[1][0] if fields[1] else "^"
    message_type = field(9).split(component)
    return Header(
        sending_application=field(3)[:227], sending_facility=field(4)[:227],
        receiving_application=field(5)[:227], receiving_facility=field(6)[:227],
        control_id=field(10)[:199], trigger=message_type[1] if len(message_type) > 1 else "",
        message_type=component.join(message_type[:2])[:20],
    )


def decode(raw: bytes) -> str:
    """The frame's text with segments ending in CR (some senders end them with LF or CRLF)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageRefused("AR", DATA_TYPE_ERROR, f"not UTF-8 text (byte {exc.start})") from exc
    if _BINARY.search(text):
        raise MessageRefused("AR", DATA_TYPE_ERROR, "binary content: control characters are not HL7 text")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def read_message(raw: bytes) -> ReceivedMessage:
    """Parse and check one message; raise `MessageRefused` when we cannot take it."""
    text = decode(raw)
    if not text.startswith("MSH"):
        raise MessageRefused("AR", SEGMENT_SEQUENCE_ERROR, "the message does not start with an MSH segment",
                             "MSH^1")
    header = read_header(text)
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's malformed message
        raise MessageRefused("AR", SEGMENT_SEQUENCE_ERROR, f"unreadable message: {exc}", "MSH^1") from exc
    received = ReceivedMessage(header, message)
    if not header.control_id:
        raise MessageRefused("AR", REQUIRED_FIELD_MISSING, "MSH-10 message control id is missing", "MSH^1^10")
    version = received.get("MSH.F12.R1.C1")
    if version not in SUPPORTED_VERSIONS:
        raise MessageRefused("AR", UNSUPPORTED_VERSION,
                             f"version {version or '(none)'} is not supported; send HL7 v2.5", "MSH^1^12")
    kind = f"{received.get('MSH.F9.R1.C1')}^{received.get('MSH.F9.R1.C2')}"
    if kind not in REQUIRED_SEGMENTS:
        known_type = any(k.split("^")[0] == kind.split("^")[0] for k in REQUIRED_SEGMENTS)
        raise MessageRefused("AR", UNSUPPORTED_EVENT_CODE if known_type else UNSUPPORTED_MESSAGE_TYPE,
                             f"message type {kind} is not supported (we take {', '.join(REQUIRED_SEGMENTS)})",
                             "MSH^1^9")
    for segment in REQUIRED_SEGMENTS[kind]:
        if not received.has(segment):
            raise MessageRefused("AR", SEGMENT_SEQUENCE_ERROR, f"{kind} needs a {segment} segment", segment)
    return ReceivedMessage(Header(**{**header.__dict__, "message_type": kind}), message)


def hl7_timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def parse_hl7_date(value: str, where: str) -> date | None:
    """A DT/TS value's date (YYYYMMDD...), None when empty."""
    if not value:
        return None
    try:
        return datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError as exc:
        raise MessageRefused("AE", DATA_TYPE_ERROR, f"{where} {value!r} is not a date (YYYYMMDD)", where) from exc


def new_control_id() -> str:
    return f"H{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}{secrets.token_hex(4).upper()}"


def escape(value: str) -> str:
    """Text for a field, with the delimiters escaped (\\F\\, \\S\\, ...) and no line breaks."""
    escaped = str(_ESCAPER.escape(value)) if value else ""
    return escaped.replace("\r", " ").replace("\n", " ")


def build_ack(header: Header, ack_code: str, *, application: str, facility: str, text: str = "",
              error_code: str | None = None, location: str = "") -> bytes:
    """ACK^<trigger>^ACK: MSH, MSA (code, the message's control id, text) and, for AE/AR, ERR with
    the location (ERR-2), the table 0357 code (ERR-3), severity E (ERR-4) and the reason (ERR-8)."""
    trigger = header.trigger if header.trigger.isalnum() else ""
    msh = "|".join([
        "MSH", "^~\\&", escape(application), escape(facility), escape(header.sending_application),
        escape(header.sending_facility), hl7_timestamp(), "", f"ACK^{trigger}^ACK", new_control_id(), "P", "2.5",
    ])
    msa = "|".join(["MSA", ack_code, escape(header.control_id), escape(text[:80])])
    segments = [msh, msa]
    if error_code is not None:
        segments.append("|".join([
            "ERR", "", location, f"{error_code}^{ERROR_TEXT.get(error_code, '')}^HL70357", "E", "", "", "",
            escape(text[:1000]),
        ]))
    return ("\r".join(segments) + "\r").encode("utf-8")
