"""A patient whose record another clinician and another centre made, plus people with no tie to it:
the starting point for testing care relationships (who gains and loses access, and when)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport, ReportStatus
from followup.models import Consultation, ConsultationStatus
from hospital.clock import utcnow
from hospital.models import EmergencyAccess, Organization, OrganizationKind, Practitioner, Role, User
from hospital.seed import DemoSeed
from referrals.models import Referral, ReferralStatus
from tests.factories import make_preliminary_report

# Longer ago than CARE_RELATIONSHIP_DAYS (30 by default): the relationship has lapsed.
LONG_AGO = timedelta(days=60)


@dataclass
class CareWorld:
    report: DiagnosticReport
    author: User  # the clinician who referred the patient for this report
    outsider_staff: User  # imaging staff of a centre that never saw the patient


def make_care_world(session: Session, demo: DemoSeed) -> CareWorld:
    """demo.patient with a signed report that neither the demo clinician nor the demo centre had a part
    in: another clinician referred them to another centre."""
    report = make_preliminary_report(session, demo, [(10, 10, 14, 14)])
    report.status = ReportStatus.FINAL  # signed, so its patient may read it too
    hilltop = Organization(name="Hilltop Imaging", kind=OrganizationKind.IMAGING_CENTRE, ae_title="HILLTOP")
    faraway = Organization(name="Faraway Imaging", kind=OrganizationKind.IMAGING_CENTRE, ae_title="FARAWAY")
    session.add_all([hilltop, faraway])
    session.flush()
    author = _staff(session, demo, "grace", Role.CLINICIAN, demo.clinic)
    outsider = _staff(session, demo, "far_staff", Role.IMAGING_STAFF, faraway)
    referral = session.get(Referral, report.referral_id)
    assert referral is not None
    referral.requester_id = author.practitioner_id
    referral.performer_organization_id = hilltop.id
    session.flush()
    return CareWorld(report, author, outsider)


def _staff(session: Session, demo: DemoSeed, username: str, role: Role, organization: Organization) -> User:
    practitioner = Practitioner(given_name=username.title(), family_name="Test", organization_id=organization.id)
    session.add(practitioner)
    session.flush()
    user = User(username=username, role=role, password_hash=demo.users["clinician"].password_hash,
                practitioner_id=practitioner.id, organization_id=organization.id)
    session.add(user)
    session.flush()
    return user


def add_relationship(session: Session, demo: DemoSeed, world: CareWorld, state: str) -> None:
    """Give the demo clinician (and, through a referral, the demo centre) a relationship with
    demo.patient in `state`: 'none', 'referral:<status>', 'referral:completed:long-ago',
    'consultation:<status>', 'consultation:finished:long-ago', or an emergency access grant of the
    clinician's, 'emergency:active' or 'emergency:expired'."""
    if state == "none":
        return
    kind, status, *age = state.split(":")
    clinician = demo.users["clinician"]
    when = utcnow() - (LONG_AGO if age == ["long-ago"] else timedelta(minutes=5))
    if kind == "emergency":
        # A "break the glass" grant of the clinician's own: open now, or ended an hour ago.
        start = utcnow() - (timedelta(hours=2) if status == "expired" else timedelta(minutes=5))
        session.add(EmergencyAccess(user_id=clinician.id, patient_id=demo.patient.id, reason="collapsed in clinic",
                                    started_at=start, expires_at=start + timedelta(hours=1)))
    elif kind == "referral":
        session.add(Referral(
            patient_id=demo.patient.id, requester_id=clinician.practitioner_id, created_by_user_id=clinician.id,
            performer_organization_id=demo.imaging_centre.id, modality="CT", body_part="CHEST",
            procedure_description="CT chest", reason="cough", status=ReferralStatus(status),
            created_at=when, updated_at=when,
        ))
    else:
        consultation_status = ConsultationStatus(status)
        ended = consultation_status in (ConsultationStatus.FINISHED, ConsultationStatus.CANCELLED)
        session.add(Consultation(
            report_id=world.report.id, patient_id=demo.patient.id, practitioner_id=clinician.practitioner_id,
            status=consultation_status, reason="discuss", created_at=when, ended_at=when if ended else None,
        ))
    session.flush()
