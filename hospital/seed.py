"""Demo data: organisations, one user of every role, two patients; then each stage's seeders add
what it needs (schedules and slots, the price catalog, the active AI model).

Idempotent: seeding twice finds the rows by their natural keys and adds nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.auth import hash_password
from hospital.models import Organization, OrganizationKind, Patient, Practitioner, Role, User

logger = logging.getLogger(__name__)

DEMO_PASSWORD = "demo-password-1"

# A stage seeder adds its own demo rows given the core ones.
Seeder = Callable[[Session, "DemoSeed"], None]


@dataclass
class DemoSeed:
    imaging_centre: Organization
    clinic: Organization
    pharmacy: Organization
    patient: Patient
    other_patient: Patient
    users: dict[str, User]
    extra: dict[str, Any] = field(default_factory=dict)


def _get_or_create(session: Session, model: type[Any], lookup: dict[str, Any], **values: Any) -> Any:
    row = session.scalar(select(model).filter_by(**lookup))
    if row is None:
        row = model(**lookup, **values)
        session.add(row)
        session.flush()
    return row


def seed_demo(session: Session, app: Flask) -> DemoSeed:
    centre = _get_or_create(
        session, Organization, {"name": "Riverside Imaging Centre"}, kind=OrganizationKind.IMAGING_CENTRE,
        ae_title="RIVERSIDE",
    )
    clinic = _get_or_create(session, Organization, {"name": "Hillside Family Practice"}, kind=OrganizationKind.CLINIC)
    pharmacy = _get_or_create(session, Organization, {"name": "Central Pharmacy"}, kind=OrganizationKind.PHARMACY)
    ai_partner = _get_or_create(session, Organization, {"name": "Acme Imaging AI"}, kind=OrganizationKind.AI_PARTNER)
    patient = _get_or_create(
        session, Patient, {"mrn": "MRN-1001"}, family_name="Rivera", given_name="Alex",
        birth_date=date(1968, 4, 12), gender="female", email="alex.rivera@example.org",
    )
    other = _get_or_create(
        session, Patient, {"mrn": "MRN-1002"}, family_name="Okafor", given_name="Sam",
        birth_date=date(1975, 9, 30), gender="male",
    )
    people = {
        "clinician": ("Ada", "Lovelace", clinic),
        "imaging_staff": ("Tom", "Tech", centre),
        "radiologist": ("Rosa", "Ray", centre),
        "pharmacist": ("Pia", "Pharm", pharmacy),
    }
    users: dict[str, User] = {}
    for username, (given, family, org) in people.items():
        practitioner = _get_or_create(
            session, Practitioner, {"given_name": given, "family_name": family}, organization_id=org.id
        )
        users[username] = _user(session, username, Role(username), practitioner_id=practitioner.id, organization_id=org.id)
    users["patient"] = _user(session, "patient", Role.PATIENT, patient_id=patient.id)
    users["patient2"] = _user(session, "patient2", Role.PATIENT, patient_id=other.id)
    users["admin"] = _user(session, "admin", Role.ADMIN)
    users["partner"] = _user(session, "partner", Role.PARTNER, organization_id=ai_partner.id)
    users["contributor"] = _user(session, "contributor", Role.CONTRIBUTOR, organization_id=clinic.id)
    seed = DemoSeed(centre, clinic, pharmacy, patient, other, users)
    with app.app_context():  # stage seeders read the app's config
        for seeder in app.extensions["hospital.seeders"]:
            seeder(session, seed)
    session.flush()
    return seed


@functools.cache
def _demo_password_hash() -> str:
    # Hashed once per process: scrypt is deliberately slow, and every demo user shares the password.
    return hash_password(DEMO_PASSWORD)


def _user(session: Session, username: str, role: Role, **links: Any) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, role=role, password_hash=_demo_password_hash(), **links)
        session.add(user)
        session.flush()
    return user
