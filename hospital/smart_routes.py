"""SMART on FHIR endpoints: discovery, the authorization page with its consent screen, the token
and revocation endpoints, EHR launches, and the gate that holds SMART tokens to their scopes at
/fhir. The protocol's rules live in `hospital.smart`; this module parses and answers.

OAuth errors are answered the way RFC 6749 says (JSON `error`/`error_description` from the token
endpoint, `error` on the redirect URI once that URI is known to be the app's); before the redirect
URI is verified, the user gets an error page, never a redirect to an address nobody checked.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, g, json, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from hospital.api import json_body, required
from hospital.audit import record_access, record_denied
from hospital.auth import current_user, load_current_user, require_roles
from hospital.db import request_session
from hospital.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from hospital.i18n import current_locale_name
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Role, SmartClient, User
from hospital.smart import (
    ASSERTION_ALGORITHMS,
    AuthorizationRequest,
    OAuthError,
    approve,
    check_authorization_request,
    client_credentials,
    create_launch,
    exchange_code,
    patients_to_choose,
    refresh_tokens,
    register_client,
    revoke,
)
from hospital.smart_scopes import SmartAccess, parse_resource_scope, split_scopes
from hospital.web import add_nav_link, form_action

logger = logging.getLogger(__name__)

bp = Blueprint("smart", __name__, template_folder="templates")

SCOPES_SUPPORTED = [
    "launch", "launch/patient", "offline_access", "online_access",
    "patient/*.rs", "patient/*.read", "user/*.rs", "user/*.read", "system/*.rs", "system/*.read",
    "patient/*.cruds", "user/*.cruds",
]
CAPABILITIES = [
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
    "context-ehr-patient", "context-standalone-patient", "permission-offline", "permission-online",
    "permission-patient", "permission-user", "permission-v1", "permission-v2",
]
INTERACTION_WORDS = {"c": _l("create"), "r": _l("read"), "u": _l("update"), "d": _l("delete"), "s": _l("search")}
# Why the consent screen sends a person back to choose again (`hospital.smart.approve`'s refusals).
CONSENT_REFUSALS = {
    "choose a patient for this app": _l("choose a patient for this app"),
    "you may not open this patient's record": _l("you may not open this patient's record"),
}
# What the consent screen says a scope without a resource type lets the app do.
SCOPE_WORDS = {
    "launch": _l("Open with the patient you are looking at"),
    "launch/patient": _l("Open with a patient you choose"),
    "offline_access": _l("Keep access after you sign out, until you revoke it"),
    "online_access": _l("Keep access while you are signed in"),
}
# The FHIR interaction a request path and method is, as the audit action code the scopes check.
_METHOD_ACTIONS = {"PUT": "U", "PATCH": "U", "DELETE": "D"}


def _site() -> str:
    return request.url_root.rstrip("/")


def endpoint_urls() -> dict[str, str]:
    site = _site()
    return {"authorize": f"{site}/oauth/authorize", "token": f"{site}/oauth/token", "revoke": f"{site}/oauth/revoke"}


def smart_configuration() -> dict[str, Any]:
    urls = endpoint_urls()
    return {
        "issuer": f"{_site()}/fhir",
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "revocation_endpoint": urls["revoke"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": CAPABILITIES,
    }


@bp.get("/.well-known/smart-configuration")
@bp.get("/fhir/.well-known/smart-configuration")
def well_known() -> Response:
    return Response(json.dumps(smart_configuration()), mimetype="application/json")


# --- authorization -------------------------------------------------------------------------------


def _redirect_with(uri: str, params: dict[str, str]) -> Response:
    separator = "&" if "?" in uri else "?"
    return redirect(f"{uri}{separator}{urlencode({k: v for k, v in params.items() if v})}")  # type: ignore[return-value]


def _oauth_failure(exc: OAuthError, args: dict[str, str]) -> ResponseReturnValue:
    if exc.status == 302:
        return _redirect_with(args["redirect_uri"], {"error": exc.error, "error_description": exc.description,
                                                     "state": args.get("state", "")})
    logger.info("authorization request refused: %s (%s)", exc.error, exc.description)
    return render_template("error.html", status=exc.status, kind="refused", title=_("The app's request was refused"),
                           message=exc.description), exc.status


def _describe_scopes(scope: str) -> list[str]:
    """Each scope as a line the person asked to consent reads, in their language. A resource type
    stays its FHIR name: it is what the app's own documentation calls it."""
    lines = []
    separator = "、" if current_locale_name() == "zh_CN" else ", "
    for part in split_scopes(scope):
        parsed = parse_resource_scope(part)
        if parsed is None:
            lines.append(str(SCOPE_WORDS.get(part, part)))
            continue
        what = _("all record types") if parsed.resource_type == "*" else parsed.resource_type
        verbs = separator.join(str(INTERACTION_WORDS[letter]) for letter in "cruds" if letter in parsed.interactions)
        verbs = verbs.capitalize()
        if parsed.context == "patient":
            lines.append(_("%(verbs)s %(what)s of the selected patient", verbs=verbs, what=what))
        elif parsed.context == "user":
            lines.append(_("%(verbs)s %(what)s that you may see", verbs=verbs, what=what))
        else:
            lines.append(_("%(verbs)s %(what)s", verbs=verbs, what=what))
    return lines


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> ResponseReturnValue:
    args = dict(request.form if request.method == "POST" else request.args)
    session = request_session()
    try:
        auth_request = check_authorization_request(session, args, f"{_site()}/fhir")
    except OAuthError as exc:
        return _oauth_failure(exc, args)
    user = load_current_user()
    if user is None:
        raise Unauthenticated("sign in to let the app use your account")  # the sign-in page comes back here
    if request.method == "GET":
        return _consent_page(auth_request, args)
    if request.form.get("decision") != "approve":
        record_access(session, user, "E", "SmartClient", auth_request.client.client_id, description="SMART app denied")
        return _redirect_with(auth_request.redirect_uri, {"error": "access_denied",
                                                          "error_description": "the user declined",
                                                          "state": auth_request.state})
    chosen = request.form.get("patient", "")
    try:
        code = approve(session, user, auth_request, int(chosen) if chosen.isdigit() else None)
    except OAuthError as exc:
        if exc.status == 302:
            return _oauth_failure(exc, args)
        if exc.error == "access_denied":
            record_denied(user, "E", "Patient", chosen or None,
                          f"SMART app {auth_request.client.client_id}: {exc.description}",
                          patient_id=int(chosen) if chosen.isdigit() else None)
        # The consent page's reader gets the refusal in their words; the redirect keeps OAuth's.
        refusal = str(CONSENT_REFUSALS.get(exc.description, exc.description))
        return _consent_page(auth_request, args, error=refusal), exc.status
    record_access(session, user, "E", "SmartClient", auth_request.client.client_id,
                  description=f"SMART app authorised: {auth_request.scope}")
    return _redirect_with(auth_request.redirect_uri, {"code": code, "state": auth_request.state})


def _consent_page(auth_request: AuthorizationRequest, args: dict[str, str], error: str | None = None) -> str:
    user = current_user()
    needs_choice = ("launch/patient" in split_scopes(auth_request.scope) and auth_request.launch_patient_id is None
                    and user.patient_id is None)
    patients = patients_to_choose(request_session(), user) if needs_choice else []
    hidden = {name: args.get(name, "") for name in ("response_type", "client_id", "redirect_uri", "scope", "state",
                                                     "aud", "code_challenge", "code_challenge_method", "launch")}
    return render_template("smart/consent.html", app_name=auth_request.client.name,
                           scope_lines=_describe_scopes(auth_request.scope), hidden=hidden,
                           patients=patients, needs_choice=needs_choice, error=error)


# --- tokens --------------------------------------------------------------------------------------


def _oauth_json(body: dict[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.post("/oauth/token")
def token() -> Response:
    form = request.form.to_dict()
    token_url = endpoint_urls()["token"]
    session = request_session()
    grant_type = form.get("grant_type")
    try:
        if grant_type == "authorization_code":
            grant = exchange_code(session, form, token_url)
        elif grant_type == "refresh_token":
            grant = refresh_tokens(session, form, token_url)
        elif grant_type == "client_credentials":
            grant = client_credentials(session, form, token_url)
        else:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    except OAuthError as exc:
        logger.info("token request refused: %s (%s)", exc.error, exc.description)
        status = 401 if exc.error == "invalid_client" else 400
        # Refusals that withdrew tokens (a replayed code or refresh token) must keep that work.
        return _oauth_json({"error": exc.error, "error_description": exc.description}, status)
    return _oauth_json(grant.response())


@bp.post("/oauth/revoke")
def revoke_token() -> Response:
    try:
        revoke(request_session(), request.form.to_dict(), endpoint_urls()["token"])
    except OAuthError as exc:
        return _oauth_json({"error": exc.error, "error_description": exc.description}, 401)
    return _oauth_json({})


# --- EHR launch ----------------------------------------------------------------------------------


@bp.post("/api/smart/launches")
def launch() -> ResponseReturnValue:
    """Open a registered app for the caller with a patient in context (the EHR launch)."""
    user = current_user()
    data = json_body()
    client_id = required(data, "client_id")
    patient_id = required(data, "patient_id", int)
    try:
        value = create_launch(request_session(), user, client_id, patient_id)
    except OAuthError as exc:
        if exc.status == 404:
            raise NotFound(exc.description) from exc
        raise Forbidden(exc.description) from exc
    return {"launch": value, "iss": f"{_site()}/fhir"}, 201


# --- registration by an administrator ------------------------------------------------------------


@bp.route("/admin/smart-apps", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def apps_page() -> ResponseReturnValue:
    """Register a SMART app (the same rules as `hospital smart-client add`) and list those there are."""
    session = request_session()
    form = request.form.to_dict() if request.method == "POST" else {}
    if request.method == "POST":
        def add() -> str:
            service = None
            if form.get("service_user", "").strip():
                service = session.scalar(select(User).where(User.username == form["service_user"].strip()))
                if service is None:
                    raise InvalidInput(_("no user named %(username)s", username=repr(form["service_user"].strip())))
            try:
                jwks = json.loads(form["jwks"]) if form.get("jwks", "").strip() else None
                client = register_client(session, name=form.get("name", "").strip() or "Unnamed app",
                                         scopes=form.get("scopes", ""),
                                         redirect_uris=form.get("redirect_uris", "").split(),
                                         jwks=jwks, jwks_uri=form.get("jwks_uri", "").strip() or None,
                                         service_user=service)
            except ValueError as exc:  # json.JSONDecodeError is one too
                raise InvalidInput(str(exc)) from exc
            record_access(session, current_user(), "C", "SmartClient", client.client_id, description=client.name)
            return _("%(name)s registered; its client_id is %(client_id)s", name=client.name,
                     client_id=client.client_id)

        if form_action(session, add):
            return redirect(url_for("smart.apps_page"))
    apps = list(session.scalars(select(SmartClient).order_by(SmartClient.id)))
    return render_template("smart/apps.html", apps=apps, values=form), 400 if form else 200


# --- the gate at /fhir ---------------------------------------------------------------------------


def _fhir_action(parts: list[str]) -> tuple[str | None, str]:
    """The resource type and audit action of a /fhir request (type None: the server itself)."""
    if not parts or not parts[0] or parts[0] in ("metadata", ".well-known"):
        return None, "R"
    type_name = parts[0]
    if request.method in _METHOD_ACTIONS:
        return type_name, _METHOD_ACTIONS[request.method]
    if request.method == "POST":
        return type_name, "E" if parts[-1] == "_search" else "C"
    is_instance = len(parts) >= 2 and parts[1] not in ("_history", "_search")
    return type_name, "R" if is_instance else "E"


def _gate_smart_tokens() -> None:
    if not request.path.startswith("/fhir") or not request.headers.get("Authorization"):
        return
    user = load_current_user()
    smart: SmartAccess | None = g.get("smart_access")
    if user is None or smart is None:
        return
    parts = request.path[len("/fhir"):].strip("/").split("/")
    if parts == [""] and request.method == "POST":
        record_denied(user, "E", "Bundle", None, f"SMART app {smart.client_id}: transaction/batch refused")
        raise Forbidden("transaction and batch Bundles are not open to SMART app tokens")
    type_name, action = _fhir_action(parts)
    if type_name is not None and not smart.allows(type_name, action):
        record_denied(user, action, type_name, parts[1] if len(parts) > 1 else None,
                      f"SMART app {smart.client_id}: no scope grants {action} on {type_name}")
        raise Forbidden(f"the token's scopes do not grant this interaction on {type_name}")


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(_gate_smart_tokens)
    add_nav_link(app, _l("SMART apps"), "smart.apps_page", Role.ADMIN)
