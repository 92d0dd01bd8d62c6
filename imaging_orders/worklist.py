"""The DICOM Modality Worklist: booked examinations as Scheduled Procedure Steps.

A modality asks "what is scheduled on my station today?" with a C-FIND identifier; this module
turns the identifier's matching keys into one SQL query over appointments, referrals, slots,
schedules and patients, and answers each match with the return keys the modality asked for. The
modality copies PatientID, AccessionNumber and StudyInstanceUID into the images it makes, which is
what lets `imaging_orders.archive.ingest` match the images back to the order.

Dates and times are local to the centre whose scanner the step is on, as DICOM expects of a
modality's clock: a query for 20261124 returns the steps on the 24th of that centre's calendar,
and a step at 08:00 in Berlin is answered as 080000 with TimezoneOffsetFromUTC +0100 when the
query asks for that key. Stored times stay UTC (`hospital.clock`).

Names are answered in UTF-8 (ISO_IR 192) and in their component groups: a Chinese patient is
"Wang^Xiaoming=王^小明" (`hospital.dicom_text`), and a PatientName key finds them by pinyin, by
characters or by both, however the console types it.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from io import BytesIO
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from sqlalchemy import ColumnElement, Select, or_, select, tuple_
from sqlalchemy.orm import Session

from hospital import clock
from hospital.dicom_matching import (
    InvalidMatchKey,
    date_range,
    person_name_clause,
    person_name_matches,
    wildcard_pattern,
)
from hospital.dicom_text import dicom_person_name
from hospital.models import Organization, Patient, Practitioner
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot
from referrals.public import ORDERS, Priority, ReferralStatus, ReferralSummary, summary_from_values

logger = logging.getLogger(__name__)

# Appointments a modality may still perform: booked, or the patient has arrived.
WORKLIST_APPOINTMENT_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.ARRIVED)
WORKLIST_REFERRAL_STATUSES = (ReferralStatus.ACCEPTED, ReferralStatus.SCHEDULED, ReferralStatus.IN_PROGRESS)
CHARACTER_SET = "ISO_IR 192"  # UTF-8: patient names are not limited to Latin-1
# A Han character (as `hospital.dicom_text.is_han` tells them), as a PostgreSQL regular expression.
_HAN_CHARACTER = "[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]"
_STUDY_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:hospital:imaging_orders:worklist:study")
_PRIORITY_CODES = {
    Priority.STAT: "STAT",
    Priority.ASAP: "HIGH",
    Priority.URGENT: "HIGH",
    Priority.ROUTINE: "ROUTINE",
}
_SEX_CODES = {"male": "M", "female": "F", "other": "O"}


class WorklistQueryError(InvalidMatchKey):
    """The C-FIND identifier cannot be understood (e.g. a malformed date range)."""


@dataclass(frozen=True, slots=True)
class _Step:
    """The appointment's part of a step (its columns, not an ORM object: a day of 10,000 steps is
    read as plain rows)."""

    id: int
    start: datetime
    end: datetime
    status: AppointmentStatus
    description: str | None


@dataclass(frozen=True, slots=True)
class _Person:
    family_name: str
    given_name: str
    mrn: str = ""
    birth_date: date | None = None
    gender: str | None = None

    @property
    def dicom_name(self) -> str:
        return dicom_person_name(self.family_name, self.given_name)


@dataclass(frozen=True, slots=True)
class _Station:
    modality: str
    station_ae_title: str
    name: str
    room: str


@dataclass(frozen=True)
class _Row:
    appointment: _Step
    referral: ReferralSummary
    patient: _Person
    schedule: _Station
    requester: _Person
    local_start: datetime  # the step's start and end on the centre's clock (its IANA zone)
    local_end: datetime

    @classmethod
    def from_columns(cls, found: Any) -> _Row:
        zone = clock.zone(found.timezone)
        return cls(
            _Step(found.step_id, found.step_start, found.step_end, found.step_status, found.step_description),
            summary_from_values(found[_ORDERS_START:]),
            _Person(found.patient_family_name, found.patient_given_name, found.patient_mrn, found.patient_birth_date,
                    found.patient_gender),
            _Station(found.station_modality, found.station_ae_title, found.station_name, found.station_room),
            _Person(found.requester_family_name, found.requester_given_name),
            found.step_start.astimezone(zone), found.step_end.astimezone(zone),
        )


# How a return key's text is made from a row; a dict: the keys of a sequence's single item.
_Text = Callable[[_Row], str]
# A return key's value: made from the row, the same for every row (a constant), or, for a
# sequence, the keys of its single item.
_Fill = _Text | str | dict[str, "_Text | str"]
# An encoding as a presentation context negotiates it: (implicit VR, little endian).
Encoding = tuple[bool, bool]
IMPLICIT_LITTLE_ENDIAN: Encoding = (True, True)
_CHARACTER_SET_TAG = BaseTag(0x00080005)
_TEXT_ENCODING = "utf-8"  # CHARACTER_SET, ISO_IR 192
_PYTHON_ENCODINGS = convert_encodings(CHARACTER_SET)


def study_instance_uid_for(referral: ReferralSummary) -> str:
    """The StudyInstanceUID the worklist hands out for `referral`: the same on every query.

    Derived from the referral's id, accession number and creation time, so a referral id reused
    after a database reset (development, tests) does not give a UID already used for other images.
    """
    created = referral.created_at.isoformat() if referral.created_at else ""
    # A name-based (v5) UUID as a 2.25 UID (ISO/IEC 9834-8). pydicom's generate_uid ignores its
    # entropy sources when prefix is None, so it cannot give a repeatable 2.25 UID.
    name = "|".join([str(referral.referral_id), referral.accession_number or "", created])
    return f"2.25.{uuid.uuid5(_STUDY_UID_NAMESPACE, name).int}"


def find_worklist_items(
    session: Session, query: Dataset, encoding: Encoding = IMPLICIT_LITTLE_ENDIAN
) -> Iterator[Dataset]:
    """Yield one response identifier per scheduled procedure step matching `query`, as pydicom data
    sets read from the bytes `match_worklist` answers with (so they decode like received ones)."""
    implicit, little = encoding
    for encoded in match_worklist(session, query, encoding).encoded():
        yield read_dataset(BytesIO(encoded), implicit, little, parent_encoding=_PYTHON_ENCODINGS)


# A step's place in the worklist's order (its start, then its id): where a part of a day ends.
StepKey = tuple[datetime, int]


@dataclass(frozen=True)
class WorklistAnswer:
    """The candidate steps a query found, read whole from the database as plain rows, and how to
    answer each: the rest of the matching (the centre's own day, names in pinyin) and the encoding
    need no session, so a node sends the first answers while it makes the next, after the
    transaction is over."""

    plan: _ResponsePlan
    found: list[Any]  # database rows of _base_statement's columns
    first_day: date | None
    last_day: date | None
    names: list[str]

    @property
    def candidates(self) -> int:
        return len(self.found)

    @property
    def last_key(self) -> StepKey | None:
        """Where the next part of the day starts (None when nothing was read)."""
        if not self.found:
            return None
        last = self.found[-1]
        return (last.step_start, last.step_id)

    def rows(self) -> Iterator[_Row]:
        for found in self.found:
            row = _Row.from_columns(found)
            # The SQL window is wide enough for any zone; the centre's own calendar decides the day.
            day = row.local_start.date()
            if (self.first_day and day < self.first_day) or (self.last_day and day > self.last_day):
                continue
            if self.names and not any(person_name_matches(name, row.patient.dicom_name) for name in self.names):
                continue
            yield row

    def encoded(self) -> Iterator[bytes]:
        count = 0
        for row in self.rows():
            count += 1
            yield self.plan.encode(row)
        logger.info("worklist query matched %d scheduled steps", count)


def match_worklist(
    session: Session, query: Dataset, encoding: Encoding = IMPLICIT_LITTLE_ENDIAN, *,
    after: StepKey | None = None, limit: int | None = None,
) -> WorklistAnswer:
    """The scheduled procedure steps matching `query`, each to be answered as an identifier: all
    of them, or (for a caller reading a big day in parts) at most `limit` candidate rows in the
    steps' order, after the step whose `StepKey` is `after` (`WorklistAnswer.last_key`).

    Supported matching keys: ScheduledStationAETitle, Modality, ScheduledProcedureStepStartDate
    (single date or range) inside ScheduledProcedureStepSequence, and PatientID, PatientName,
    AccessionNumber at the top level; `*` and `?` wildcards are honoured, text matching is
    case-insensitive. Raises `WorklistQueryError` for a query it cannot interpret.

    Each identifier is the data set's bytes in `encoding`, the one the C-FIND's presentation
    context negotiated: the return keys' tags, VRs and headers are worked out once per query, so a
    step costs its values and a join of bytes, not ~25 pydicom elements built, validated and
    written (a day of 10,000 steps is what a busy centre's consoles ask for).
    """
    step_query = _step_query(query)
    plan = _ResponsePlan.for_query(query, step_query, encoding)
    statement = _base_statement()
    statement = _filter(statement, Schedule.station_ae_title, _value(step_query, "ScheduledStationAETitle"))
    statement = _filter(statement, Schedule.modality, _value(step_query, "Modality"))
    first_day, last_day = _date_bounds(_value(step_query, "ScheduledProcedureStepStartDate"))
    window_start, window_end = clock.utc_window_for_days(first_day, last_day)
    if window_start is not None:
        statement = statement.where(Appointment.start >= window_start)
    if window_end is not None:
        statement = statement.where(Appointment.start < window_end)
    statement = _filter(statement, Patient.mrn, _value(query, "PatientID"))
    statement = _filter(statement, ORDERS.c.accession_number, _value(query, "AccessionNumber"))
    names = _person_name(_value(query, "PatientName"))
    statement = _name_filter(statement, names)
    if after is not None:
        statement = statement.where(tuple_(Appointment.start, Appointment.id) > tuple_(*after))
    if limit is not None:
        statement = statement.limit(limit)
    return WorklistAnswer(plan, list(session.execute(statement)), first_day, last_day, names)


# What a step's row holds before ORDERS' columns (which `summary_from_values` reads from the end).
_STEP_COLUMNS = (
    Appointment.id.label("step_id"), Appointment.start.label("step_start"), Appointment.end.label("step_end"),
    Appointment.status.label("step_status"), Appointment.description.label("step_description"),
    Patient.family_name.label("patient_family_name"), Patient.given_name.label("patient_given_name"),
    Patient.mrn.label("patient_mrn"), Patient.birth_date.label("patient_birth_date"),
    Patient.gender.label("patient_gender"),
    Schedule.modality.label("station_modality"), Schedule.station_ae_title.label("station_ae_title"),
    Schedule.name.label("station_name"), Schedule.room.label("station_room"),
    Practitioner.family_name.label("requester_family_name"),
    Practitioner.given_name.label("requester_given_name"),
    Organization.timezone.label("timezone"),
)
_ORDERS_START = len(_STEP_COLUMNS)


def _base_statement() -> Select[Any]:
    return (
        select(*_STEP_COLUMNS, *ORDERS.c)
        .join(ORDERS, Appointment.referral_id == ORDERS.c.referral_id)
        .join(Patient, ORDERS.c.patient_id == Patient.id)
        .join(Practitioner, ORDERS.c.requester_id == Practitioner.id)
        .join(Slot, Appointment.slot_id == Slot.id)
        .join(Schedule, Slot.schedule_id == Schedule.id)
        .join(Organization, Schedule.organization_id == Organization.id)
        .where(
            Appointment.status.in_(WORKLIST_APPOINTMENT_STATUSES),
            ORDERS.c.status.in_(WORKLIST_REFERRAL_STATUSES),
            ORDERS.c.accession_number.is_not(None),
        )
        .order_by(Appointment.start, Appointment.id)
    )


def _step_query(query: Dataset) -> Dataset | None:
    """The query's single ScheduledProcedureStepSequence item (None when not asked for)."""
    if "ScheduledProcedureStepSequence" not in query:
        return None
    items = query.ScheduledProcedureStepSequence
    if items is None or len(items) == 0:
        return Dataset()
    if len(items) > 1:
        raise WorklistQueryError("ScheduledProcedureStepSequence may hold only one item in a query")
    return items[0]


def _value(ds: Dataset | None, keyword: str) -> list[str]:
    """The matching values for `keyword`: [] when absent or empty (universal match)."""
    if ds is None or keyword not in ds:
        return []
    raw = ds[keyword].value
    if raw is None:
        return []
    values = list(raw) if isinstance(raw, MultiValue | list) else [raw]
    cleaned = [str(v).strip("\x00 ") for v in values]
    return [v for v in cleaned if v and v != "*"]


def _person_name(values: list[str]) -> list[str]:
    # "DOE^JOHN^^^" and "DOE^JOHN" are the same name; stored names have two components.
    return [v.rstrip("^ ") or "*" for v in values]


def _name_filter(statement: Select[Any], names: list[str]) -> Select[Any]:
    """Narrow the steps to patients whose name may match one of `names` (PatientName keys).

    A Han name's alphabetic group (pinyin) is made in Python, not held in a column, so such
    patients pass here and `person_name_matches` decides on the row; other names match in SQL.
    """
    if not names or "*" in names:
        return statement
    stored = Patient.family_name + "^" + Patient.given_name
    return statement.where(or_(
        (Patient.family_name + Patient.given_name).regexp_match(_HAN_CHARACTER),
        *(person_name_clause(stored, name) for name in names),
    ))


def _filter(statement: Select[Any], column: ColumnElement[Any], values: list[str]) -> Select[Any]:
    """Single-value, wildcard or (leniently, for several values) list matching on one column."""
    if not values:
        return statement
    conditions: list[ColumnElement[bool]] = []
    for value in values:
        if value == "*":
            return statement
        # ILIKE without wildcards is a case-insensitive equality; modalities vary in case.
        conditions.append(column.ilike(wildcard_pattern(value), escape="\\"))
    return statement.where(or_(*conditions))


def _date_bounds(values: list[str]) -> tuple[date | None, date | None]:
    """The inclusive local days a ScheduledProcedureStepStartDate key asks for (None: unbounded)."""
    if not values:
        return None, None
    if len(values) > 1:
        raise WorklistQueryError("ScheduledProcedureStepStartDate takes one date or one range")
    try:
        return date_range(values[0])
    except InvalidMatchKey as exc:
        raise WorklistQueryError(exc.message) from exc


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def _priority(row: _Row) -> str:
    return _PRIORITY_CODES.get(row.referral.priority, "ROUTINE")


# Orders carry no standard procedure code (no LOINC/RadLex playbook here), so the procedure is
# coded in our own scheme ("99" marks a local one, PS3.16 8.2): modality and body part as the code,
# the order's description as its meaning. A modality selects its protocol from these.
PROCEDURE_CODING_SCHEME = "99CLHOSP"
# Scheduled Procedure Step Status (0040,0020) defined terms, PS3.3 C.4.10; the worklist holds only
# booked and arrived steps.
_STEP_STATUSES = {AppointmentStatus.BOOKED: "SCHEDULED", AppointmentStatus.ARRIVED: "ARRIVED"}


def _procedure_code(row: _Row) -> str:
    return f"{row.referral.modality}-{row.referral.body_part}".upper()[:16]


# The one item of RequestedProcedureCodeSequence and ScheduledProtocolCodeSequence.
_CODE_ITEM: dict[str, _Text | str] = {
    "CodeValue": _procedure_code,
    "CodingSchemeDesignator": PROCEDURE_CODING_SCHEME,
    "CodeMeaning": lambda r: r.referral.procedure_description[:64],
}


_TOP_LEVEL: dict[str, _Fill] = {
    "PatientName": lambda r: r.patient.dicom_name,
    "PatientID": lambda r: r.patient.mrn,
    "PatientBirthDate": lambda r: r.patient.birth_date.strftime("%Y%m%d") if r.patient.birth_date else "",
    "PatientSex": lambda r: _SEX_CODES.get((r.patient.gender or "").lower(), ""),
    "AccessionNumber": lambda r: r.referral.accession_number or "",
    "ReferringPhysicianName": lambda r: dicom_person_name(r.requester.family_name, r.requester.given_name),
    "RequestedProcedureDescription": lambda r: r.referral.procedure_description[:64],
    "RequestedProcedureID": lambda r: f"RP{r.referral.referral_id}"[:16],
    "RequestedProcedurePriority": _priority,
    "StudyInstanceUID": lambda r: study_instance_uid_for(r.referral),
    "BodyPartExamined": lambda r: r.referral.body_part[:16],
    "RequestedProcedureCodeSequence": _CODE_ITEM,
    # The offset the step's DA and TM values are in (PS3.3 C.12.1.1.8), e.g. "+0100".
    "TimezoneOffsetFromUTC": lambda r: r.local_start.strftime("%z"),
}

_STEP: dict[str, _Fill] = {
    "Modality": lambda r: r.schedule.modality,
    "ScheduledStationAETitle": lambda r: r.schedule.station_ae_title,
    "ScheduledProcedureStepStartDate": lambda r: r.local_start.strftime("%Y%m%d"),
    "ScheduledProcedureStepStartTime": lambda r: r.local_start.strftime("%H%M%S"),
    "ScheduledProcedureStepEndDate": lambda r: r.local_end.strftime("%Y%m%d"),
    "ScheduledProcedureStepEndTime": lambda r: r.local_end.strftime("%H%M%S"),
    "ScheduledProcedureStepDescription": lambda r: (r.appointment.description or r.referral.procedure_description)[:64],
    "ScheduledProcedureStepID": lambda r: f"SPS{r.appointment.id}"[:16],
    "ScheduledStationName": lambda r: r.schedule.name[:16],
    "ScheduledProcedureStepLocation": lambda r: r.schedule.room[:16],
    "ScheduledProcedureStepStatus": lambda r: _STEP_STATUSES.get(r.appointment.status, "SCHEDULED"),
    "ScheduledProtocolCodeSequence": _CODE_ITEM,
    "ScheduledPerformingPhysicianName": "",
}


# VRs whose explicit-VR header has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM_TAG = (0xFFFE, 0xE000)


@dataclass(frozen=True)
class _Key:
    """A return key as answered: its tag and VR, and its text value made from the row (`text`),
    or the keys of its single item (`item`, a sequence), or neither (asked for, not held: empty).
    `header` is the element's tag (and VR) already encoded: only its length follows. `whole` is the
    whole element, encoded once, when its value is the same for every row."""

    tag: BaseTag
    vr: str
    header: bytes
    length: struct.Struct
    text: _Text | None = None
    item: list[_Segment] | None = None
    whole: bytes | None = None


def _key(tag: BaseTag, vr: str, encoding: Encoding, text: _Text | str | None = None,
         item: list[_Key] | None = None) -> _Key:
    implicit, little = encoding
    order = "<" if little else ">"
    if len(vr) != 2:
        vr = "UN"  # an ambiguous dictionary VR ("US or SS"): unknown is what a reader can take
    header = struct.pack(f"{order}HH", tag.group, tag.element)
    if implicit:
        length = struct.Struct(f"{order}I")
    elif vr in _LONG_HEADER_VRS:
        header, length = header + vr.encode("ascii") + b"\x00\x00", struct.Struct(f"{order}I")
    else:
        header, length = header + vr.encode("ascii"), struct.Struct(f"{order}H")
    if item is not None:
        return _Key(tag, vr, header, length, item=_segments(item))
    if text is None or isinstance(text, str):
        value = _text_value(text or "", vr)
        return _Key(tag, vr, header, length, whole=header + length.pack(len(value)) + value)
    return _Key(tag, vr, header, length, text=text)


def _text_value(text: str, vr: str) -> bytes:
    value = text.encode(_TEXT_ENCODING)
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    return value


# What a data set's encoding is made of, in order: elements encoded once for the query (runs of
# them joined), and keys whose value each row gives.
_Segment = bytes | _Key


def _segments(keys: list[_Key]) -> list[_Segment]:
    segments: list[_Segment] = []
    for key in keys:
        if key.whole is not None and segments and isinstance(segments[-1], bytes):
            segments[-1] += key.whole
        else:
            segments.append(key.whole if key.whole is not None else key)
    return segments


@dataclass(frozen=True)
class _ResponsePlan:
    """What to answer for one query, worked out once: which return keys, in tag order, with their
    headers in the negotiated encoding, and every value that does not depend on the row. Per step
    only the row's values are made and joined."""

    segments: list[_Segment]
    item_header: struct.Struct  # an item's tag and its (defined) length

    @classmethod
    def for_query(cls, query: Dataset, step_query: Dataset | None, encoding: Encoding) -> _ResponsePlan:
        keys = [_key(_CHARACTER_SET_TAG, "CS", encoding, CHARACTER_SET)]
        for elem in query:
            keyword = elem.keyword
            if not keyword or keyword == "SpecificCharacterSet":
                continue
            if keyword == "ScheduledProcedureStepSequence":
                step_keys = [e.keyword for e in step_query] if step_query is not None and len(step_query) else list(_STEP)
                keys.append(_key(BaseTag(elem.tag), "SQ", encoding, item=_plan_keys(step_keys, _STEP, encoding)))
            elif keyword in _TOP_LEVEL:
                keys.append(_plan_key(keyword, _TOP_LEVEL[keyword], encoding))
            else:
                # Asked for but not held here: answered empty, as a return key with no value.
                keys.append(_key(BaseTag(elem.tag), elem.VR or "UN", encoding))
        order = "<" if encoding[1] else ">"
        return cls(_segments(_in_tag_order(keys)), struct.Struct(f"{order}HHI"))

    def encode(self, row: _Row) -> bytes:
        return _encode(self.segments, row, self.item_header)


def _in_tag_order(keys: list[_Key]) -> list[_Key]:
    # A data set's elements go in ascending tag order (PS3.5 7.1), each tag once.
    unique = {key.tag: key for key in keys}
    return [unique[tag] for tag in sorted(unique)]


def _plan_key(keyword: str, fill: _Fill, encoding: Encoding) -> _Key:
    tag = BaseTag(tag_for_keyword(keyword) or 0)
    if isinstance(fill, dict):
        return _key(tag, "SQ", encoding, item=_plan_keys(list(fill), fill, encoding))
    return _key(tag, dictionary_VR(tag), encoding, fill)


def _plan_keys(keywords: list[str], fills: Mapping[str, _Fill], encoding: Encoding) -> list[_Key]:
    planned: list[_Key] = []
    for keyword in keywords:
        if not keyword:
            continue
        if keyword in fills:
            planned.append(_plan_key(keyword, fills[keyword], encoding))
            continue
        tag = tag_for_keyword(keyword)
        if tag is not None:
            planned.append(_key(BaseTag(tag), dictionary_VR(tag), encoding))
    return _in_tag_order(planned)


def _encode(segments: list[_Segment], row: _Row, item_header: struct.Struct) -> bytes:
    parts: list[bytes] = []
    for segment in segments:
        if isinstance(segment, bytes):
            parts.append(segment)
            continue
        if segment.item is not None:
            # One item of defined length in a sequence of defined length: both are known here.
            item = _encode(segment.item, row, item_header)
            value = item_header.pack(*_ITEM_TAG, len(item)) + item
        else:
            assert segment.text is not None  # keys without a row's value are encoded whole
            value = _text_value(segment.text(row), segment.vr)
        parts += (segment.header, segment.length.pack(len(value)), value)
    return b"".join(parts)
