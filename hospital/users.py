"""User accounts: an administrator lists them, creates one with the profile its role needs, changes
its role, deactivates and reactivates it, resets its password and unlocks it; any user changes
their own password. The one place a User row is written after seeding.

What each role needs is written once, in `PROFILE_RULES`, and follows how the stages read a user:

- patient: `patient_id` (a patient sees only that record's compartment); one active account per
  patient record, so two people never share one compartment by mistake;
- clinician: a Practitioner (`practitioner_id`: referrals, consultations and prescriptions are
  theirs through it) in an optional clinic or hospital (a consultation is billed to it when set);
- radiologist: a Practitioner (who signs reports) and an imaging centre: `organization_id` scopes
  the referrals, studies and patients a radiologist sees, so without one they would see nothing;
- imaging_staff: an imaging centre (the centre's orders, schedules and worklist);
- pharmacist: a pharmacy (its dispense queue and stock);
- partner: an AI partner organisation (its model packages and statements);
- admin: nothing.

Links the role does not use are cleared, so a former clinician keeps no path to their patients.

A password an administrator chooses is temporary: `must_change_password` sends the user to change
it at the next sign-in, and no bearer token is issued until then. Anything that changes what an
account may do (role, links, deactivation, a reset password) revokes its live bearer tokens; a
browser session re-reads the user on every request, and deactivation or a new password (reset or
changed) also ends every browser session of the account. Every change is audited; the log names user
ids and roles, never a name or an MRN.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload
from werkzeug.security import check_password_hash

from hospital import clock
from hospital.audit import record_access
from hospital.auth import hash_password, revoke_user_sessions, revoke_user_tokens
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Organization, OrganizationKind, Patient, Practitioner, Role, User
from hospital.notify import is_mail_address
from hospital.ratelimit import check_rate

logger = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{3,80}")
# No password rule existed before temporary passwords; 12 characters is NIST SP 800-63B's floor
# for a password chosen for someone (8) with a margin, and the demo's password already meets it.
MIN_PASSWORD_LENGTH = 12
# scrypt's cost grows with the input; a bound keeps a pasted megabyte from tying up a worker.
MAX_PASSWORD_LENGTH = 256
NAME_MAX_LENGTH = 100  # Practitioner.given_name / family_name
EMAIL_MAX_LENGTH = 200  # User.email
# What the APIs answer (403) to an account that still has a temporary password.
PASSWORD_CHANGE_REQUIRED = (
    "the password was set by an administrator and must be changed first, in the web app at /account/password"
)


# A role and an organisation kind as a noun phrase inside a sentence ("created as a pharmacist",
# "an imaging centre"): whole phrases, so that each language writes its own articles (Chinese none).
ROLE_AS_NOUN = {
    Role.PATIENT: _l("a patient"),
    Role.CLINICIAN: _l("a clinician"),
    Role.RADIOLOGIST: _l("a radiologist"),
    Role.IMAGING_STAFF: _l("an imaging staff"),
    Role.PHARMACIST: _l("a pharmacist"),
    Role.ADMIN: _l("an admin"),
    Role.PARTNER: _l("a partner"),
    Role.CONTRIBUTOR: _l("a research contributor"),
}
ROLE_ACCOUNT = {
    Role.PATIENT: _l("a patient account"),
    Role.CLINICIAN: _l("a clinician account"),
    Role.RADIOLOGIST: _l("a radiologist account"),
    Role.IMAGING_STAFF: _l("an imaging staff account"),
    Role.PHARMACIST: _l("a pharmacist account"),
    Role.ADMIN: _l("an admin account"),
    Role.PARTNER: _l("a partner account"),
    Role.CONTRIBUTOR: _l("a research contributor account"),
}
ORGANIZATION_KIND_AS_NOUN = {
    OrganizationKind.IMAGING_CENTRE: _l("an imaging centre"),
    OrganizationKind.CLINIC: _l("a clinic"),
    OrganizationKind.PHARMACY: _l("a pharmacy"),
    OrganizationKind.HOSPITAL: _l("a hospital"),
    OrganizationKind.AI_PARTNER: _l("an ai partner"),
}
ORGANIZATION_KIND_LABELS = {
    OrganizationKind.IMAGING_CENTRE: _l("imaging centre"),
    OrganizationKind.CLINIC: _l("clinic"),
    OrganizationKind.PHARMACY: _l("pharmacy"),
    OrganizationKind.HOSPITAL: _l("hospital"),
    OrganizationKind.AI_PARTNER: _l("AI partner"),
}


def role_as_noun(role: Role) -> str:
    return str(ROLE_AS_NOUN[role])


def organization_kind_label(kind: OrganizationKind) -> str:
    return str(ORGANIZATION_KIND_LABELS[kind])


@dataclass(frozen=True)
class ProfileRule:
    """What an account of one role must be linked to."""

    patient: bool = False  # linked to an existing Patient, found by MRN
    practitioner: bool = False  # given and family name make (or rename) its Practitioner
    organization_kinds: frozenset[OrganizationKind] = frozenset()  # empty: no organisation
    organization_required: bool = False
    needs: str = ""  # the rule in words, for the form's hints: a lazy gettext string
    kinds_as_noun: str = ""  # the organisation kinds, as a noun phrase ("a clinic or hospital")

    def describe(self) -> str:
        """The rule in words, for the form's hints, in the reader's language."""
        return str(self.needs)


PROFILE_RULES: dict[Role, ProfileRule] = {
    Role.PATIENT: ProfileRule(patient=True, needs=_l("the patient's record (found by name or MRN)")),
    Role.CLINICIAN: ProfileRule(
        practitioner=True, organization_kinds=frozenset({OrganizationKind.CLINIC, OrganizationKind.HOSPITAL}),
        needs=_l("given and family name, optionally a clinic or hospital"), kinds_as_noun=_l("a clinic or hospital"),
    ),
    Role.RADIOLOGIST: ProfileRule(
        practitioner=True, organization_kinds=frozenset({OrganizationKind.IMAGING_CENTRE}), organization_required=True,
        needs=_l("given and family name, an imaging centre"), kinds_as_noun=_l("an imaging centre"),
    ),
    Role.IMAGING_STAFF: ProfileRule(
        organization_kinds=frozenset({OrganizationKind.IMAGING_CENTRE}), organization_required=True,
        needs=_l("an imaging centre"), kinds_as_noun=_l("an imaging centre"),
    ),
    Role.PHARMACIST: ProfileRule(organization_kinds=frozenset({OrganizationKind.PHARMACY}), organization_required=True,
                                 needs=_l("a pharmacy"), kinds_as_noun=_l("a pharmacy")),
    Role.ADMIN: ProfileRule(needs=_l("nothing else")),
    Role.PARTNER: ProfileRule(organization_kinds=frozenset({OrganizationKind.AI_PARTNER}), organization_required=True,
                              needs=_l("an ai partner"), kinds_as_noun=_l("an ai partner")),
    # The institution its uploads come from: its data-use agreement is what an export needs.
    Role.CONTRIBUTOR: ProfileRule(
        organization_kinds=frozenset({OrganizationKind.HOSPITAL, OrganizationKind.CLINIC,
                                      OrganizationKind.IMAGING_CENTRE, OrganizationKind.AI_PARTNER}),
        organization_required=True, needs=_l("the contributing institution"),
        kinds_as_noun=_l("a hospital, clinic, imaging centre or ai partner"),
    ),
}


@dataclass(frozen=True)
class AccountProfile:
    """What an account is linked to, as an administrator typed it. Which fields count depends on
    the role (`PROFILE_RULES`); the others are ignored."""

    patient_mrn: str = ""
    given_name: str = ""
    family_name: str = ""
    organization_id: int | None = None
    timezone: str = ""  # IANA zone the user reads times in; empty: their record's or organisation's
    email: str = ""  # where their notifications are mailed; empty: in the app only (a patient: their record's)


@dataclass(frozen=True)
class NewAccount:
    username: str
    role: Role
    temporary_password: str
    profile: AccountProfile = field(default_factory=AccountProfile)


@dataclass(frozen=True)
class _Links:
    """A profile checked against its role's rule: what the account will point at."""

    patient: Patient | None = None
    organization: Organization | None = None
    names: tuple[str, str] | None = None  # (given, family) of the account's Practitioner
    timezone: str | None = None
    email: str | None = None


def _require_admin(admin: User, what: str) -> None:
    if admin.role is not Role.ADMIN:
        # Behind the pages' own role check: an API client reads this, in English.
        raise Forbidden(f"only an administrator {what}")


def list_users(session: Session, admin: User) -> list[User]:
    _require_admin(admin, "sees the user list")
    users = list(session.scalars(
        select(User)
        .options(selectinload(User.organization), selectinload(User.practitioner), selectinload(User.patient))
        .order_by(User.role, User.username)
    ))
    record_access(session, admin, "E", "User", None, description=f"user list ({len(users)})")
    return users


@dataclass(frozen=True)
class PatientChoice:
    """A patient record an administrator may link a new patient account to."""

    patient: Patient
    has_account: bool  # an active patient account is linked already: one account per record


def find_patients_for_account(session: Session, admin: User, text: str, limit: int = 20) -> list[PatientChoice]:
    """Patients whose MRN, given or family name contains every word of `text` (at most `limit`),
    each with whether an active account already holds the record. Audited: it reads patients."""
    _require_admin(admin, "searches patients for an account")
    words = text.split()[:5]
    if not words:
        raise InvalidInput(_("type part of the patient's name or MRN to search"))
    statement = select(Patient)
    for word in words:
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        statement = statement.where(or_(Patient.mrn.ilike(pattern, escape="\\"),
                                        Patient.given_name.ilike(pattern, escape="\\"),
                                        Patient.family_name.ilike(pattern, escape="\\")))
    patients = list(session.scalars(statement.order_by(Patient.family_name, Patient.given_name, Patient.id).limit(limit)))
    claimed = set(session.scalars(select(User.patient_id).where(
        User.patient_id.in_([p.id for p in patients]), User.role == Role.PATIENT, User.active.is_(True))))
    record_access(session, admin, "E", "Patient", None, description=f"patient search for an account ({len(patients)})")
    return [PatientChoice(p, p.id in claimed) for p in patients]


def get_user(session: Session, admin: User, user_id: int) -> User:
    _require_admin(admin, "sees a user account")
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(_("user %(id)s does not exist", id=user_id))
    record_access(session, admin, "R", "User", user.id, patient_id=user.patient_id)
    return user


def create_user(session: Session, admin: User, account: NewAccount) -> User:
    """A new account with a temporary password and the profile its role needs. A clinician or
    radiologist gets a new Practitioner."""
    _require_admin(admin, "creates accounts")
    username = _checked_username(session, account.username)
    _check_password_rule(account.temporary_password, username)
    links = _resolve_profile(session, account.role, account.profile, user_id=None)
    user = User(
        username=username, role=account.role, password_hash=hash_password(account.temporary_password),
        must_change_password=True, active=True, failed_logins=0,
    )
    session.add(user)
    _apply_links(session, user, account.role, links)
    session.flush()
    record_access(session, admin, "C", "User", user.id, patient_id=user.patient_id,
                  description=f"created ({account.role.value})")
    logger.info("user %s created as %s by user %s", user.id, account.role.value, admin.id)
    return user


def change_role(session: Session, admin: User, user_id: int, role: Role, profile: AccountProfile) -> User:
    """Give an account `role` with the profile that role needs (the same role with a different
    profile moves it, e.g. to another pharmacy). Links the role does not use are cleared; if what
    the account may reach changed, its live bearer tokens are revoked. Nothing changes, nothing is
    recorded, when the account already is what was asked."""
    _require_admin(admin, "changes roles")
    active_admins = _lock_active_admins(session)
    user = _locked_user(session, user_id)
    if user.role is Role.ADMIN and role is not Role.ADMIN:
        _ensure_admin_remains(user, active_admins, admin, "demote")
    links = _resolve_profile(session, role, profile, user_id=user.id)
    old_role = user.role
    before = _reach(user)
    names_before = _practitioner_state(user)
    zone_before = user.timezone
    email_before = user.email
    _apply_links(session, user, role, links)
    session.flush()
    if (_reach(user) == before and _practitioner_state(user) == names_before and user.timezone == zone_before
            and user.email == email_before):
        return user
    revoked = revoke_user_tokens(session, user) if _reach(user) != before else 0
    change = f"role {old_role.value} -> {role.value}" if role is not old_role else f"profile changed ({role.value})"
    if user.timezone != zone_before:
        change += f"; time zone {zone_before or 'unset'} -> {user.timezone or 'unset'}"
    if user.email != email_before:
        # Which way, not the address: the audit trail and the log name no one.
        change += "; email " + ("set" if email_before is None else "removed" if user.email is None else "changed")
    record_access(session, admin, "U", "User", user.id, patient_id=user.patient_id,
                  description=f"{change}; {revoked} token(s) revoked")
    logger.info("user %s: %s by user %s; %d token(s) revoked", user.id, change, admin.id, revoked)
    return user


def deactivate_user(session: Session, admin: User, user_id: int) -> User:
    """The account can no longer sign in; its browser session ends at its next request and its
    bearer tokens are revoked. Deactivating an inactive account changes nothing."""
    _require_admin(admin, "deactivates accounts")
    active_admins = _lock_active_admins(session)
    user = _locked_user(session, user_id)
    if not user.active:
        return user
    if user.role is Role.ADMIN:
        _ensure_admin_remains(user, active_admins, admin, "deactivate")
    user.active = False
    revoked = revoke_user_tokens(session, user)
    ended = revoke_user_sessions(session, user)
    session.flush()
    record_access(session, admin, "U", "User", user.id, patient_id=user.patient_id,
                  description=f"deactivated; {revoked} token(s) revoked, {ended} browser session(s) ended")
    logger.info("user %s deactivated by user %s; %d token(s) revoked", user.id, admin.id, revoked)
    return user


def reactivate_user(session: Session, admin: User, user_id: int) -> User:
    """The account may sign in again (a lock by failed sign-ins stays until it is unlocked)."""
    _require_admin(admin, "reactivates accounts")
    user = _locked_user(session, user_id)
    if user.active:
        return user
    if user.role is Role.PATIENT and user.patient_id is not None:
        # Meanwhile another account may have been linked to the same patient record.
        _ensure_patient_unclaimed(session, user.patient_id, user.id)
    user.active = True
    session.flush()
    record_access(session, admin, "U", "User", user.id, patient_id=user.patient_id, description="reactivated")
    logger.info("user %s reactivated by user %s", user.id, admin.id)
    return user


def reset_password(session: Session, admin: User, user_id: int, temporary_password: str) -> User:
    """Set a temporary password the user must change at the next sign-in; this also unlocks the
    account, and revokes its bearer tokens (a reset usually means the old password is not safe)."""
    _require_admin(admin, "resets passwords")
    user = _locked_user(session, user_id)
    _check_password_rule(temporary_password, user.username)
    user.password_hash = hash_password(temporary_password)
    user.must_change_password = True
    user.failed_logins = 0
    user.locked_until = None
    revoked = revoke_user_tokens(session, user)
    ended = revoke_user_sessions(session, user)
    session.flush()
    record_access(session, admin, "U", "User", user.id, patient_id=user.patient_id,
                  description=f"password reset; {revoked} token(s) revoked, {ended} browser session(s) ended")
    logger.info("user %s: password reset by user %s; %d token(s) revoked", user.id, admin.id, revoked)
    return user


def unlock_user(session: Session, admin: User, user_id: int) -> User:
    """Clear the failed sign-in count so the user may sign in again. Unlocking an account that is
    not locked changes nothing."""
    _require_admin(admin, "unlocks accounts")
    user = _locked_user(session, user_id)
    if user.failed_logins == 0:
        return user
    user.failed_logins = 0
    user.locked_until = None
    session.flush()
    record_access(session, admin, "U", "User", user.id, description="unlocked")
    logger.info("user %s unlocked by user %s", user.id, admin.id)
    return user


def change_own_password(session: Session, user: User, current: str, new: str, confirmation: str) -> User:
    """A signed-in user replaces their password (required once after an administrator set it).
    The user's bearer tokens and browser sessions are revoked: whoever knew the old password may
    have made one (the page that changed it starts this browser a new session)."""
    # Per account, as sign-in is per address: a stolen session must not guess the password quickly.
    check_rate(f"password-change:{user.id}", int(current_app.config["LOGIN_ATTEMPTS_PER_MINUTE"]), 60)
    if not check_password_hash(user.password_hash, current):
        raise InvalidInput(_("the current password is not correct"))
    if new != confirmation:
        raise InvalidInput(_("the new password and its confirmation are not the same"))
    _check_password_rule(new, user.username)
    if check_password_hash(user.password_hash, new):
        raise InvalidInput(_("the new password must differ from the current one"))
    user.password_hash = hash_password(new)
    user.must_change_password = False
    revoked = revoke_user_tokens(session, user)
    ended = revoke_user_sessions(session, user)
    session.flush()
    record_access(session, user, "U", "User", user.id, patient_id=user.patient_id,
                  description=f"own password changed; {revoked} token(s) revoked, {ended} browser session(s) ended")
    logger.info("user %s changed their password; %d token(s) revoked", user.id, revoked)
    return user


def _checked_username(session: Session, username: str) -> str:
    username = username.strip()
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput(
            _("a username is 3 to 80 letters, digits, '.', '_' or '-', got %(value)s", value=repr(username[:100]))
        )
    # Sign-in matches exactly, but 'Admin' beside 'admin' would only confuse people.
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())) is not None:
        raise Conflict(_("the username %(value)s is already taken", value=repr(username)))
    return username


def _check_password_rule(password: str, username: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(_("a password needs at least %(num)d characters", num=MIN_PASSWORD_LENGTH))
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(_("a password may have at most %(num)d characters", num=MAX_PASSWORD_LENGTH))
    if username.lower() in password.lower():
        raise InvalidInput(_("a password must not contain the username"))


def _required_name(value: str, family: bool, role: Role) -> str:
    value = value.strip()
    account = ROLE_ACCOUNT[role]
    if not value:
        raise InvalidInput(_("%(account)s needs a family name", account=account) if family
                           else _("%(account)s needs a given name", account=account))
    if len(value) > NAME_MAX_LENGTH:
        raise InvalidInput(_("the family name may have at most %(num)d characters", num=NAME_MAX_LENGTH) if family
                           else _("the given name may have at most %(num)d characters", num=NAME_MAX_LENGTH))
    return value


def _resolve_profile(session: Session, role: Role, profile: AccountProfile, user_id: int | None) -> _Links:
    """Check `profile` against the rule of `role` and find what it names; nothing is written, so an
    error here leaves nothing half-done."""
    rule = PROFILE_RULES[role]
    account = ROLE_ACCOUNT[role]
    patient = None
    if rule.patient:
        mrn = profile.patient_mrn.strip()
        if not mrn:
            raise InvalidInput(_("a patient account needs the MRN of the patient's record"))
        # Locked, so two administrators linking accounts to one record at once take turns and the
        # second sees the first's account.
        patient = session.scalar(select(Patient).where(Patient.mrn == mrn).with_for_update())
        if patient is None:
            raise InvalidInput(_("no patient has the MRN %(mrn)s; register the patient first", mrn=repr(mrn[:64])))
        _ensure_patient_unclaimed(session, patient.id, user_id)
    names = None
    if rule.practitioner:
        names = (_required_name(profile.given_name, False, role),
                 _required_name(profile.family_name, True, role))
    organization = None
    if rule.organization_kinds:
        kinds = rule.kinds_as_noun
        if profile.organization_id is None:
            if rule.organization_required:
                raise InvalidInput(_("%(account)s needs an organisation: %(kinds)s", account=account, kinds=kinds))
        else:
            organization = session.get(Organization, profile.organization_id)
            if organization is None:
                raise InvalidInput(_("organisation %(id)s does not exist", id=profile.organization_id))
            if organization.kind not in rule.organization_kinds:
                raise InvalidInput(_(
                    "%(name)s is %(kind)s; %(account)s belongs to %(kinds)s", name=organization.name,
                    kind=ORGANIZATION_KIND_AS_NOUN[organization.kind], account=account, kinds=kinds,
                ))
    zone = clock.valid_zone_name(profile.timezone) if profile.timezone.strip() else None
    return _Links(patient=patient, organization=organization, names=names, timezone=zone,
                  email=_checked_email(profile.email))


def _checked_email(value: str) -> str | None:
    """The address an account's notifications are mailed to, as typed but trimmed; None when left
    empty. Not unique: a ward or a pharmacy may share one mailbox."""
    address = value.strip()
    if not address:
        return None
    if len(address) > EMAIL_MAX_LENGTH or not is_mail_address(address):
        raise InvalidInput(_("%(value)s is not an email address; write it as name@example.org",
                             value=repr(address[:64])))
    return address


def _ensure_patient_unclaimed(session: Session, patient_id: int, user_id: int | None) -> None:
    statement = select(User.username).where(
        User.patient_id == patient_id, User.role == Role.PATIENT, User.active.is_(True)
    )
    if user_id is not None:
        statement = statement.where(User.id != user_id)
    other = session.scalar(statement.limit(1))
    if other is not None:
        raise Conflict(_(
            "this patient record already has an active account (%(username)s); deactivate that account first",
            username=repr(other),
        ))


def _apply_links(session: Session, user: User, role: Role, links: _Links) -> None:
    # Relationships, not ids, so the objects in this session agree with the row after the flush.
    user.role = role
    user.patient = links.patient
    user.organization = links.organization
    if user.timezone != links.timezone:
        user.timezone = links.timezone
    if user.email != links.email:
        user.email = links.email
    if links.names is None:
        user.practitioner = None
        return
    given, family = links.names
    practitioner = user.practitioner
    if practitioner is None:
        user.practitioner = Practitioner(given_name=given, family_name=family, organization=links.organization)
        session.add(user.practitioner)
        return
    # The same person in a new post keeps their Practitioner: their referrals and signed reports
    # still point at them. Only what changed is written, so an unchanged profile adds no version.
    if (practitioner.given_name, practitioner.family_name) != (given, family):
        practitioner.given_name, practitioner.family_name = given, family
    if practitioner.organization is not links.organization:
        practitioner.organization = links.organization


def _reach(user: User) -> tuple[Role, int | None, int | None, int | None]:
    """What decides what the account may see and do."""
    return user.role, user.patient_id, user.practitioner_id, user.organization_id


def _practitioner_state(user: User) -> tuple[str, str, int | None] | None:
    practitioner = user.practitioner
    if practitioner is None:
        return None
    return practitioner.given_name, practitioner.family_name, practitioner.organization_id


def _locked_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound(_("user %(id)s does not exist", id=user_id))
    return user


def _lock_active_admins(session: Session) -> list[int]:
    """Lock the active administrators' rows, in id order, before any account row: two
    administrators demoting each other at once then queue instead of both seeing 'another admin
    remains' (or deadlocking), and the second sees the first's change."""
    return list(session.scalars(
        select(User.id).where(User.role == Role.ADMIN, User.active.is_(True)).order_by(User.id).with_for_update()
    ))


def _ensure_admin_remains(user: User, active_admins: list[int], admin: User, verb: str) -> None:
    if user.active and active_admins == [user.id]:
        raise Conflict(
            _("%(username)s is the last active administrator and cannot be demoted; make another account an "
              "administrator first", username=repr(user.username)) if verb == "demote" else
            _("%(username)s is the last active administrator and cannot be deactivated; make another account an "
              "administrator first", username=repr(user.username))
        )
    if user.id == admin.id:
        raise Conflict(_("you cannot demote your own account; ask another administrator") if verb == "demote"
                       else _("you cannot deactivate your own account; ask another administrator"))
