"""Referral API (`/api/referrals`) and the clinician's referral pages."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import or_, select

from hospital.api import enum_value, json_body, optional_enum_arg, required
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import DomainError, InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Organization, OrganizationKind, Patient, Role, person_name
from hospital.patients import GENDERS, PatientDetails, create_patient
from referrals.models import Priority, Referral, ReferralStatus
from referrals.service import (
    MODALITY_NAMES,
    PRIORITY_WORDS,
    STATUS_WORDS,
    ReferralRequest,
    cancel_referral,
    create_referral,
    get_referral,
    list_referrals,
)

logger = logging.getLogger(__name__)

bp = Blueprint("referrals", __name__, template_folder="templates")

# The sex a patient is registered with, as the form offers it.
GENDER_WORDS = {"female": _l("Female"), "male": _l("Male"), "other": _l("Other"), "unknown": _l("Unknown")}


def listed_name(patient: Patient) -> str:
    """A patient's name in a list sorted by family name: "Haddad, Noor"; a Chinese name is written
    family first anyway, and whole ("王小明")."""
    written = person_name(patient.family_name, patient.given_name)
    if written == patient.family_name.strip() + patient.given_name.strip():
        return written
    return f"{patient.family_name}, {patient.given_name}"


def referral_json(referral: Referral) -> dict[str, Any]:
    return {
        "id": referral.id,
        "patient_id": referral.patient_id,
        "requester_id": referral.requester_id,
        "performer_organization_id": referral.performer_organization_id,
        "status": referral.status.value,
        "priority": referral.priority.value,
        "modality": referral.modality,
        "body_part": referral.body_part,
        "procedure_description": referral.procedure_description,
        "reason": referral.reason,
        "accession_number": referral.accession_number,
        "created_at": referral.created_at.isoformat(),
        "fhir": f"ServiceRequest/{referral.id}",
    }


def parse_priority(value: Any) -> Priority:
    return enum_value(Priority, value or "routine", "priority")


def _referral_request(data: dict[str, Any]) -> ReferralRequest:
    return ReferralRequest(
        patient_id=required(data, "patient_id", int),
        performer_organization_id=required(data, "performer_organization_id", int),
        modality=required(data, "modality"),
        body_part=required(data, "body_part"),
        procedure_description=str(data.get("procedure_description") or ""),
        reason=required(data, "reason"),
        priority=parse_priority(data.get("priority")),
        access_reason=str(data.get("access_reason") or "") or None,
    )


@bp.post("/api/referrals")
@require_roles(Role.CLINICIAN)
def create() -> ResponseReturnValue:
    request_data = _referral_request(json_body())
    session = request_session()
    referral = create_referral(session, current_user(), request_data)
    return jsonify(referral_json(referral)), 201, {"Location": url_for("referrals.show", referral_id=referral.id)}


@bp.get("/api/referrals")
@require_roles()
def index() -> ResponseReturnValue:
    session = request_session()
    referrals = list_referrals(session, current_user(), optional_enum_arg(ReferralStatus, "status"))
    return jsonify([referral_json(r) for r in referrals])


@bp.get("/api/referrals/<int:referral_id>")
@require_roles()
def show(referral_id: int) -> ResponseReturnValue:
    session = request_session()
    referral = get_referral(session, current_user(), referral_id)
    return jsonify(referral_json(referral))


@bp.post("/api/referrals/<int:referral_id>/cancel")
@require_roles(Role.CLINICIAN)
def cancel(referral_id: int) -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    referral = cancel_referral(session, current_user(), referral_id, str(data.get("reason") or "cancelled by clinician"))
    return jsonify(referral_json(referral))


@bp.get("/referrals")
@require_roles(Role.CLINICIAN)
def referral_list_page() -> ResponseReturnValue:
    session = request_session()
    referrals = list_referrals(session, current_user())
    return render_template("referrals/list.html", referrals=referrals, status_words=STATUS_WORDS,
                           priority_words=PRIORITY_WORDS)


@bp.route("/referrals/new", methods=["GET", "POST"])
@require_roles(Role.CLINICIAN)
def new_referral_page() -> ResponseReturnValue:
    """The referral form, with a server-side patient search (`?q=`) and "register a new patient",
    which comes back here with the new patient chosen (`?patient_id=`)."""
    session = request_session()
    error = None
    if request.method == "POST" and request.form.get("action") == "register_patient":
        try:
            patient = create_patient(session, current_user(), _patient_details(request.form))
        except DomainError as exc:
            session.rollback()
            error = exc.message
        else:
            flash(_("Patient %(name)s registered with MRN %(mrn)s; they are chosen below.", name=patient.display_name,
                    mrn=patient.mrn))
            return redirect(url_for("referrals.new_referral_page", patient_id=patient.id))
    elif request.method == "POST":
        form = request.form
        try:
            referral = create_referral(
                session,
                current_user(),
                ReferralRequest(
                    patient_id=_form_int(form.get("patient_id"), _("choose a patient")),
                    performer_organization_id=_form_int(form.get("performer_organization_id"),
                                                        _("choose an imaging centre")),
                    modality=form.get("modality", ""),
                    body_part=form.get("body_part", ""),
                    procedure_description=form.get("procedure_description", ""),
                    reason=form.get("reason", ""),
                    priority=parse_priority(form.get("priority")),
                    access_reason=form.get("access_reason") or None,
                ),
            )
        except DomainError as exc:
            session.rollback()
            error = exc.message
        else:
            flash(_("Referral %(id)s sent to %(centre)s. Its status is shown below.", id=referral.id,
                    centre=referral.performer.name))
            return redirect(url_for("referrals.referral_list_page"))
    form = request.form if request.method == "POST" else request.args
    search = (request.args.get("q") or "").strip()
    patients = list(session.scalars(_patient_search(search).order_by(Patient.family_name, Patient.given_name).limit(200)))
    chosen = form.get("patient_id", type=int)
    if chosen and all(p.id != chosen for p in patients) and (patient := session.get(Patient, chosen)) is not None:
        patients.insert(0, patient)  # the patient just registered or chosen stays selectable
    centres = session.scalars(
        select(Organization).where(Organization.kind == OrganizationKind.IMAGING_CENTRE).order_by(Organization.name)
    ).all()
    return render_template(
        "referrals/new.html", patients=patients, centres=centres, priorities=list(Priority), error=error,
        form=form, search=search, genders={g: GENDER_WORDS.get(g, g) for g in sorted(GENDERS)},
        modalities=MODALITY_NAMES, priority_words=PRIORITY_WORDS, listed_name=listed_name,
        registering=request.form.get("action") == "register_patient",
    ), 422 if error else 200


def _patient_search(text: str) -> Any:
    """Patients whose MRN, given or family name (or "given family") contains every word of `text`."""
    query = select(Patient)
    for word in text.split()[:5]:
        pattern = f"%{word.replace('%', '').replace('_', '')}%"
        query = query.where(or_(Patient.mrn.ilike(pattern), Patient.given_name.ilike(pattern), Patient.family_name.ilike(pattern)))
    return query


def _patient_details(form: Any) -> PatientDetails:
    too_long = {"family_name": _("the family name is longer than %(num)d characters", num=100),
                "given_name": _("the given name is longer than %(num)d characters", num=100),
                "mrn": _("the MRN is longer than %(num)d characters", num=64)}
    for name, limit in (("family_name", 100), ("given_name", 100), ("mrn", 64)):
        if len(form.get(name, "")) > limit:
            raise InvalidInput(too_long[name])
    try:
        birth_date = date.fromisoformat(form["birth_date"]) if form.get("birth_date") else None
    except ValueError as exc:
        raise InvalidInput(_("birth date %(value)s is not a date (YYYY-MM-DD)", value=repr(form.get("birth_date")))) from exc
    return PatientDetails(
        family_name=form.get("family_name", ""), given_name=form.get("given_name", ""), birth_date=birth_date,
        gender=form.get("gender") or "unknown", mrn=(form.get("mrn") or "").strip() or None,
    )


def _form_int(value: str | None, missing: str) -> int:
    """A chosen id from a form's list; `missing` (translated) says what to choose when none was."""
    if not value or not value.isdigit():
        raise InvalidInput(missing)
    return int(value)
