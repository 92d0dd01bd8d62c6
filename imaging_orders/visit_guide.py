"""What a patient needs to arrive at an examination ready: where the centre is (address in Chinese
and English, a map link) and how to prepare for each kind of examination there (fasting before a
CT with contrast, metal off for an MR).

The centre's own staff and administrators write both languages; a page shows the reader's language
and falls back to the other one rather than to nothing, because an address in the wrong language
still gets a patient to the door. Map links are stored only as http(s) URLs: the link is put on
patients' pages, and a `javascript:` URL there would run in their session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import current_locale_name
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Organization, OrganizationKind, Role, User
from imaging_orders.models import CentreDirections, ExaminationPreparation
from referrals.public import MODALITIES

logger = logging.getLogger(__name__)

# The kind of examination in words a patient knows, the abbreviation spelled out (the referral's own
# description, "CT chest without contrast", is written by and for clinicians).
EXAMINATION_KINDS = {
    "CT": _l("CT scan (computed tomography)"),
    "MR": _l("MRI scan (magnetic resonance imaging)"),
    "CR": _l("X-ray (computed radiography)"),
    "DX": _l("X-ray (digital radiography)"),
    "US": _l("Ultrasound scan"),
    "PT": _l("PET scan (positron emission tomography)"),
    "NM": _l("Nuclear medicine scan"),
    "MG": _l("Mammogram (breast X-ray)"),
    "XA": _l("Angiography (X-ray of the blood vessels)"),
    "RF": _l("Fluoroscopy (moving X-ray)"),
}
ADDRESS_MAX = 300
MAP_URL_MAX = 500
INSTRUCTIONS_MAX = 2000


def examination_kind(modality: str) -> str:
    """"CT" as a patient reads it: "CT scan (computed tomography)", in the reader's language."""
    kind = EXAMINATION_KINDS.get(modality.upper())
    return str(kind) if kind is not None else modality


def in_reader_language(english: str, chinese: str) -> str:
    """The text in the language the page is drawn in, else the other one (never nothing when
    either was written)."""
    if current_locale_name() == "zh_CN":
        return chinese or english
    return english or chinese


@dataclass(frozen=True)
class Preparation:
    modality: str
    instructions_en: str
    instructions_zh: str

    @property
    def text(self) -> str:
        return in_reader_language(self.instructions_en, self.instructions_zh)


@dataclass(frozen=True)
class VisitGuide:
    """One centre's directions and preparation instructions, as its pages show them."""

    centre_id: int
    address_en: str = ""
    address_zh: str = ""
    map_url: str | None = None
    preparations: dict[str, Preparation] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return in_reader_language(self.address_en, self.address_zh)

    def preparation(self, modality: str) -> str:
        """How to prepare for an examination of `modality` here, in the reader's language ("" when
        the centre wrote nothing)."""
        found = self.preparations.get(modality.upper())
        return found.text if found is not None else ""


def visit_guides(session: Session, centre_ids: Iterable[int]) -> dict[int, VisitGuide]:
    """The guide of each centre in `centre_ids` (an empty one where nothing is written), in two
    queries whatever the number of centres."""
    ids = sorted(set(centre_ids))
    if not ids:
        return {}
    directions = {
        row.organization_id: row
        for row in session.scalars(select(CentreDirections).where(CentreDirections.organization_id.in_(ids)))
    }
    preparations: dict[int, dict[str, Preparation]] = {}
    for row in session.scalars(
        select(ExaminationPreparation).where(ExaminationPreparation.organization_id.in_(ids))
    ):
        preparations.setdefault(row.organization_id, {})[row.modality] = Preparation(
            row.modality, row.instructions_en, row.instructions_zh
        )
    guides = {}
    for centre_id in ids:
        found = directions.get(centre_id)
        guides[centre_id] = VisitGuide(
            centre_id,
            address_en=found.address_en if found else "",
            address_zh=found.address_zh if found else "",
            map_url=found.map_url if found else None,
            preparations=preparations.get(centre_id, {}),
        )
    return guides


def visit_guide(session: Session, centre_id: int) -> VisitGuide:
    return visit_guides(session, [centre_id])[centre_id]


# Writing the guide ---------------------------------------------------------------------------------


def guide_centre(session: Session, user: User, centre_id: int) -> Organization:
    """The centre whose guide `user` may write: any centre for an administrator, their own for the
    centre's staff."""
    centre = session.get(Organization, centre_id)
    if centre is None or centre.kind is not OrganizationKind.IMAGING_CENTRE:
        raise NotFound(_("Imaging centre %(id)s does not exist.", id=centre_id))
    allowed = user.role is Role.ADMIN or (user.role is Role.IMAGING_STAFF and user.organization_id == centre.id)
    if not allowed:
        raise Forbidden(_("Only the centre's own staff and administrators can change its directions."))
    return centre


def _text(value: str, limit: int, label: str) -> str:
    text = value.strip()
    if len(text) > limit:
        raise InvalidInput(_("%(field)s is %(length)d characters long; at most %(limit)d fit.",
                             field=label, length=len(text), limit=limit))
    return text


def valid_map_url(value: str) -> str | None:
    """`value` as a link a patient may follow to a map: http(s) with a host, or nothing."""
    text = value.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(_("The map link must be a web address starting with https://, not %(value)s.",
                             value=repr(text)))
    if len(text) > MAP_URL_MAX:
        raise InvalidInput(_("The map link is %(length)d characters long; at most %(limit)d fit.",
                             length=len(text), limit=MAP_URL_MAX))
    return text


def _insert_once(session: Session, row: CentreDirections | ExaminationPreparation) -> None:
    """Insert the first row of its kind; when two people save the first one at the same moment the
    primary key or unique constraint refuses the second, who is told to look again, not shown a 500."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise Conflict(_("Someone else saved this at the same moment; reload the page to see it, then save "
                         "again if needed.")) from exc


def set_directions(
    session: Session, user: User, centre_id: int, address_en: str, address_zh: str, map_url: str
) -> CentreDirections:
    """Write where the centre is. Empty fields are allowed (a centre may not have a map link)."""
    centre = guide_centre(session, user, centre_id)
    clean_en = _text(address_en, ADDRESS_MAX, _("The English address"))
    clean_zh = _text(address_zh, ADDRESS_MAX, _("The Chinese address"))
    clean_map = valid_map_url(map_url)
    directions = session.get(CentreDirections, centre.id)
    if directions is None:
        directions = CentreDirections(organization_id=centre.id, address_en=clean_en, address_zh=clean_zh,
                                      map_url=clean_map)
        _insert_once(session, directions)
    else:
        directions.address_en, directions.address_zh, directions.map_url = clean_en, clean_zh, clean_map
        session.flush()
    record_access(session, user, "U", "Organization", centre.id, description="directions for patients changed")
    return directions


def set_preparation(
    session: Session, user: User, centre_id: int, modality: str, instructions_en: str, instructions_zh: str
) -> ExaminationPreparation | None:
    """Write how patients prepare for `modality` at the centre; both languages empty removes it."""
    centre = guide_centre(session, user, centre_id)
    code = modality.strip().upper()
    if code not in MODALITIES:
        raise InvalidInput(_("Modality %(modality)s is not one of %(known)s.", modality=repr(modality),
                             known=", ".join(sorted(MODALITIES))))
    clean_en = _text(instructions_en, INSTRUCTIONS_MAX, _("The English instructions"))
    clean_zh = _text(instructions_zh, INSTRUCTIONS_MAX, _("The Chinese instructions"))
    row = session.scalar(select(ExaminationPreparation).where(
        ExaminationPreparation.organization_id == centre.id, ExaminationPreparation.modality == code))
    if not clean_en and not clean_zh:
        if row is not None:
            session.delete(row)
            session.flush()
        record_access(session, user, "U", "Organization", centre.id, description=f"{code} preparation removed")
        return None
    if row is None:
        row = ExaminationPreparation(organization_id=centre.id, modality=code, instructions_en=clean_en,
                                     instructions_zh=clean_zh)
        _insert_once(session, row)
    else:
        row.instructions_en, row.instructions_zh = clean_en, clean_zh
        session.flush()
    record_access(session, user, "U", "Organization", centre.id, description=f"{code} preparation changed")
    return row
