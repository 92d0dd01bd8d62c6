"""The administrator's HL7 work shared by the admin page and the CLI: say what a sender's code means."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.models import Organization, OrganizationKind, Practitioner
from integration.models import CodeKind, Hl7CodeMap


def set_code_map(session: Session, kind: CodeKind, code: str, target_id: int) -> Hl7CodeMap:
    """Map (or re-map) a sender's code to one of our imaging centres or practitioners."""
    code = code.strip()
    if not code or len(code) > 227:
        raise InvalidInput(_("Give the sender's code (at most 227 characters)."))
    if kind is CodeKind.CENTRE:
        centre = session.get(Organization, target_id)
        if centre is None or centre.kind is not OrganizationKind.IMAGING_CENTRE:
            raise InvalidInput(_("Organization %(id)s is not an imaging centre.", id=target_id))
    elif session.get(Practitioner, target_id) is None:
        raise InvalidInput(_("Practitioner %(id)s does not exist.", id=target_id))
    row = session.scalar(select(Hl7CodeMap).where(Hl7CodeMap.kind == kind, Hl7CodeMap.code == code))
    if row is None:
        row = Hl7CodeMap(kind=kind, code=code, target_id=target_id)
        session.add(row)
    else:
        row.target_id = target_id
    session.flush()
    return row
