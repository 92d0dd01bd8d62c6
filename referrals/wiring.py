"""Wires the referrals stage into the app: blueprint, FHIR mappings, access scopes, events, CLI."""

from __future__ import annotations

from flask import Flask

from hospital.access import register_patient_scope
from hospital.i18n import lazy_gettext as _l
from hospital.models import Role
from hospital.web import add_nav_link
from referrals import fhir, routes, service


def register(app: Flask) -> None:
    app.register_blueprint(routes.bp)
    fhir.register_fhir(app)
    register_patient_scope(app, Role.CLINICIAN, service.referred_patient_ids)
    register_patient_scope(app, Role.IMAGING_STAFF, service.centre_patient_ids)
    register_patient_scope(app, Role.RADIOLOGIST, service.centre_patient_ids)
    add_nav_link(app, _l("My referrals"), "referrals.referral_list_page", Role.CLINICIAN)
    add_nav_link(app, _l("New referral"), "referrals.new_referral_page", Role.CLINICIAN)
