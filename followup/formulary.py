"""The formulary: the coded medicinal products (ATC or RxNorm) the pharmacies stock and the
clinicians may prescribe. Prescribing and restocking name an item by its code; a code outside the
formulary (free text such as "amoxicillin") is refused with the reason."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import FormularyItem
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _

logger = logging.getLogger(__name__)

ATC_SYSTEM = "http://www.whocc.no/atc"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# How a page names each code system.
SYSTEM_LABELS = {ATC_SYSTEM: "ATC", RXNORM_SYSTEM: "RxNorm"}


def formulary_items(session: Session) -> list[FormularyItem]:
    """The items that may be prescribed and restocked, by name."""
    return list(session.scalars(select(FormularyItem).where(FormularyItem.active.is_(True)).order_by(FormularyItem.display)))


def find_formulary_item(session: Session, code: str) -> FormularyItem | None:
    """The active item coded `code`, or None."""
    return session.scalar(select(FormularyItem).where(FormularyItem.code == code.strip(), FormularyItem.active.is_(True)))


def formulary_item(session: Session, code: str) -> FormularyItem:
    """The active item coded `code`; anything else is refused, naming what was given."""
    item = find_formulary_item(session, code)
    if item is None:
        raise InvalidInput(_("%(code)s is not in the formulary: choose a coded item (ATC or RxNorm) that the "
                             "pharmacy stocks", code=repr(code.strip()[:64])))
    return item


def system_label(system: str | None) -> str:
    return SYSTEM_LABELS.get(system or "") or _("code")
