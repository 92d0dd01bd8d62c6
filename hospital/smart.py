"""SMART on FHIR (App Launch 2.x): registered apps, authorization codes with PKCE, refresh tokens,
and backend-service client credentials with a signed JWT.

The promise: a SMART token never reaches further than the user it acts for. It is an `ApiToken`
carrying the app, the granted scopes and the launch patient; `hospital.access` applies them on top
of the role policy and care relationships. Codes, refresh tokens and launches are stored as SHA-256
only, like every other credential here. The cryptography is maintained libraries': PKCE S256 from
Authlib, and JWS verification of client assertions (RS384/ES384, the algorithms SMART Backend
Services names) from joserfc, the successor of Authlib's deprecated JOSE module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hospital.access import can_access_patient, patient_filter
from hospital.clock import utcnow
from hospital.models import (
    ApiToken,
    Patient,
    Role,
    SmartAssertionUse,
    SmartAuthorizationCode,
    SmartClient,
    SmartLaunch,
    SmartRefreshToken,
    User,
)
from hospital.smart_scopes import InvalidScope, parse_resource_scope, scope_within, split_scopes, validate_scopes

logger = logging.getLogger(__name__)

ACCESS_TOKEN_SECONDS = 3600
REFRESH_TOKEN_DAYS = 30
CODE_SECONDS = 120
LAUNCH_SECONDS = 300
# SMART Backend Services: an assertion lives at most five minutes.
MAX_ASSERTION_SECONDS = 300
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS384", "ES384"]
JWKS_FETCH_TIMEOUT_SECONDS = 5
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class OAuthError(Exception):
    """An OAuth 2.0 error response (RFC 6749 section 5.2): `error` is the code, `description`
    the reason in words."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked authorization request: the app, where to send the answer, what it asks."""

    client: SmartClient
    redirect_uri: str
    scope: str
    state: str
    code_challenge: str
    launch_patient_id: int | None  # from an EHR launch


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    scope: str
    patient_id: int | None
    refresh_token: str | None

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": self.access_token, "token_type": "Bearer",
                                "expires_in": ACCESS_TOKEN_SECONDS, "scope": self.scope}
        if self.patient_id is not None:
            body["patient"] = str(self.patient_id)
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- registration --------------------------------------------------------------------------------


def register_client(
    session: Session, *, name: str, scopes: str, redirect_uris: list[str] | None = None,
    jwks: dict[str, Any] | None = None, jwks_uri: str | None = None, service_user: User | None = None,
) -> SmartClient:
    """Register an app. A user-facing app needs redirect URIs (public without keys, confidential
    with a JWKS); a backend service needs a JWKS (or JWKS URL) and the service account it acts as."""
    try:
        allowed = validate_scopes(scopes)
    except InvalidScope as exc:
        raise ValueError(str(exc)) from exc
    if not allowed:
        raise ValueError("an app needs at least one scope")
    uris = [uri.strip() for uri in redirect_uris or [] if uri.strip()]
    for uri in uris:
        if not https_or_this_machine(uri):
            raise ValueError(f"redirect URI must be https (or http on localhost): {uri!r}")
    if jwks_uri and not https_or_this_machine(jwks_uri):
        raise ValueError(f"the JWKS URL must be https (or http on localhost): {jwks_uri!r}")
    wants_system = any(part.startswith("system/") for part in allowed)
    if jwks is not None:
        _import_keys(jwks)
    has_keys = jwks is not None or bool(jwks_uri)
    if wants_system and (not has_keys or service_user is None):
        raise ValueError("system/ scopes are for backend services: give a JWKS (or JWKS URL) and a service account")
    if not wants_system and not uris:
        raise ValueError("a user-facing app needs at least one redirect URI")
    client = SmartClient(
        client_id=secrets.token_urlsafe(16), name=name, redirect_uris=" ".join(uris), scopes=" ".join(allowed),
        jwks=json.dumps(jwks) if jwks is not None else None, jwks_uri=jwks_uri or None,
        service_user_id=service_user.id if service_user is not None else None,
    )
    session.add(client)
    session.flush()
    logger.info("SMART app %s registered as %s", name, client.client_id)
    return client


def https_or_this_machine(uri: str) -> bool:
    """https anywhere; plain http only to this machine (an app under development). Judged by the
    parsed host, so "http://localhost.evil.example" is not this machine."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in LOCAL_HOSTS)


def disable_client(session: Session, client_id: str) -> SmartClient | None:
    """Stop an app: it can no longer be authorised or take tokens, and every token it holds is
    revoked at once. None if there is no such app."""
    client = session.scalar(select(SmartClient).where(SmartClient.client_id == client_id))
    if client is None:
        return None
    client.active = False
    now = utcnow()
    session.execute(update(SmartRefreshToken).where(SmartRefreshToken.smart_client_id == client.id,
                                                    SmartRefreshToken.revoked_at.is_(None)).values(revoked_at=now))
    session.execute(update(ApiToken).where(ApiToken.smart_client_id == client.id,
                                           ApiToken.revoked_at.is_(None)).values(revoked_at=now))
    logger.info("SMART app %s disabled; its tokens are revoked", client_id)
    return client


def client_by_id(session: Session, client_id: str) -> SmartClient | None:
    return session.scalar(select(SmartClient).where(SmartClient.client_id == client_id, SmartClient.active.is_(True)))


# --- authorization code with PKCE ----------------------------------------------------------------


def check_authorization_request(session: Session, args: dict[str, str], fhir_base: str) -> AuthorizationRequest:
    """Check the query of an authorization request. An unknown app or redirect URI raises
    OAuthError with status 400 (the answer must not go to an unverified address); anything else
    raises it with status 302, to be sent back to the app's redirect URI."""
    client = client_by_id(session, args.get("client_id", ""))
    if client is None:
        raise OAuthError("invalid_client", "unknown client_id")
    redirect_uri = args.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris.split(" ") or not redirect_uri:
        raise OAuthError("invalid_request", "redirect_uri is not one registered for this app")
    if args.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "response_type must be code", 302)
    if args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
        raise OAuthError("invalid_request", "PKCE is required: code_challenge with code_challenge_method S256", 302)
    if args.get("aud", "").rstrip("/") != fhir_base.rstrip("/"):
        raise OAuthError("invalid_request", f"aud must be this FHIR server, {fhir_base}", 302)
    scope = args.get("scope", "")
    _check_scope(client, scope, user_facing=True)
    launch_patient_id = None
    if "launch" in split_scopes(scope):
        launch = session.scalar(select(SmartLaunch).where(SmartLaunch.launch_sha256 == _sha256(args.get("launch", ""))))
        if launch is None or launch.smart_client_id != client.id or launch.expires_at <= utcnow():
            raise OAuthError("invalid_request", "the launch value is unknown, expired or for another app", 302)
        launch_patient_id = launch.patient_id
    return AuthorizationRequest(client, redirect_uri, scope, args.get("state", ""), args["code_challenge"],
                                launch_patient_id)


def _check_scope(client: SmartClient, scope: str, *, user_facing: bool) -> None:
    try:
        requested = validate_scopes(scope)
    except InvalidScope as exc:
        raise OAuthError("invalid_scope", str(exc), 302) from exc
    if not any(parse_resource_scope(part) for part in requested):
        raise OAuthError("invalid_scope", "ask for at least one resource scope", 302)
    allowed = split_scopes(client.scopes)
    for part in requested:
        if user_facing and part.startswith("system/"):
            raise OAuthError("invalid_scope", f"{part!r}: system/ scopes are for backend services", 302)
        if not user_facing and not part.startswith("system/"):
            raise OAuthError("invalid_scope", f"{part!r}: a backend service asks for system/ scopes", 400)
        if not scope_within(part, allowed):
            raise OAuthError("invalid_scope", f"{part!r} is beyond what this app is registered for", 302)


def patients_to_choose(session: Session, user: User, limit: int = 200) -> list[Patient]:
    """The patients a `launch/patient` request may pick for `user`: their own record for a patient,
    for staff those in their care (the same compartment every read checks)."""
    return list(session.scalars(
        select(Patient).where(patient_filter(user, Patient.id, "Patient"), Patient.merged_into_id.is_(None))
        .order_by(Patient.family_name, Patient.given_name).limit(limit)
    ))


def approve(session: Session, user: User, request: AuthorizationRequest, chosen_patient_id: int | None) -> str:
    """The user approved: issue a one-time code bound to the request. Returns the code."""
    patient_id = request.launch_patient_id
    scopes = split_scopes(request.scope)
    if patient_id is None and "launch/patient" in scopes:
        if user.role is Role.PATIENT:
            patient_id = user.patient_id
        else:
            patient_id = chosen_patient_id
        if patient_id is None:
            raise OAuthError("invalid_request", "choose a patient for this app", 400)
    if patient_id is not None and not can_access_patient(session, user, patient_id):
        raise OAuthError("access_denied", "you may not open this patient's record", 403)
    if patient_id is None and any(part.startswith("patient/") for part in scopes):
        raise OAuthError("invalid_scope", "patient/ scopes need a patient: ask for launch/patient or launch", 302)
    code = secrets.token_urlsafe(32)
    session.add(SmartAuthorizationCode(
        code_sha256=_sha256(code), smart_client_id=request.client.id, user_id=user.id,
        redirect_uri=request.redirect_uri, scope=request.scope, patient_id=patient_id,
        code_challenge=request.code_challenge, expires_at=utcnow() + timedelta(seconds=CODE_SECONDS),
    ))
    session.flush()
    return code


def exchange_code(session: Session, form: dict[str, str], token_url: str) -> TokenGrant:
    client = authenticate_client(session, form, token_url)
    record = session.scalar(
        select(SmartAuthorizationCode).where(SmartAuthorizationCode.code_sha256 == _sha256(form.get("code", "")))
        .with_for_update()
    )
    if record is None or record.smart_client_id != client.id:
        raise OAuthError("invalid_grant", "unknown authorization code")
    if record.used_at is not None:
        # A code presented twice was intercepted or replayed: what it bought is withdrawn too.
        _revoke_all(session, client.id, record.user_id)
        raise OAuthError("invalid_grant", "the authorization code was already used; its tokens are revoked")
    if record.expires_at <= utcnow():
        raise OAuthError("invalid_grant", "the authorization code has expired")
    if form.get("redirect_uri") != record.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
    verifier = form.get("code_verifier", "")
    if not 43 <= len(verifier) <= 128 or not hmac.compare_digest(create_s256_code_challenge(verifier),
                                                                  record.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    record.used_at = utcnow()
    user = session.get(User, record.user_id)
    if user is None or not user.active:
        raise OAuthError("invalid_grant", "the account that approved this app is no longer active")
    return _issue(session, client, user, record.scope, record.patient_id)


def _issue(session: Session, client: SmartClient, user: User, scope: str, patient_id: int | None,
           *, with_refresh: bool = True) -> TokenGrant:
    plain = secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_sha256=_sha256(plain), smart_client_id=client.id, scope=scope,
                         patient_id=patient_id, expires_at=utcnow() + timedelta(seconds=ACCESS_TOKEN_SECONDS)))
    refresh = None
    scopes = split_scopes(scope)
    if with_refresh and ("offline_access" in scopes or "online_access" in scopes):
        refresh = secrets.token_urlsafe(32)
        session.add(SmartRefreshToken(
            token_sha256=_sha256(refresh), smart_client_id=client.id, user_id=user.id, scope=scope,
            patient_id=patient_id, expires_at=utcnow() + timedelta(days=REFRESH_TOKEN_DAYS),
        ))
    session.flush()
    return TokenGrant(plain, scope, patient_id, refresh)


def refresh_tokens(session: Session, form: dict[str, str], token_url: str) -> TokenGrant:
    """Rotate: the refresh token is spent and a new one comes with the new access token. A spent
    one presented again was copied: every token of that app and user is revoked."""
    client = authenticate_client(session, form, token_url)
    record = session.scalar(
        select(SmartRefreshToken).where(SmartRefreshToken.token_sha256 == _sha256(form.get("refresh_token", "")))
        .with_for_update()
    )
    if record is None or record.smart_client_id != client.id:
        raise OAuthError("invalid_grant", "unknown refresh token")
    if record.revoked_at is not None:
        _revoke_all(session, client.id, record.user_id)
        raise OAuthError("invalid_grant", "the refresh token was already used or revoked; the app's tokens are revoked")
    if record.expires_at <= utcnow():
        raise OAuthError("invalid_grant", "the refresh token has expired")
    user = session.get(User, record.user_id)
    if user is None or not user.active:
        raise OAuthError("invalid_grant", "the account is no longer active")
    scope = record.scope
    if form.get("scope"):
        narrower = split_scopes(form["scope"])
        if not all(scope_within(part, split_scopes(record.scope)) for part in narrower):
            raise OAuthError("invalid_scope", "a refresh may narrow the scopes, never widen them")
        scope = " ".join(narrower)
    record.revoked_at = utcnow()
    return _issue(session, client, user, scope, record.patient_id)


def _revoke_all(session: Session, client_pk: int, user_id: int) -> None:
    now = utcnow()
    session.execute(update(SmartRefreshToken).where(
        SmartRefreshToken.smart_client_id == client_pk, SmartRefreshToken.user_id == user_id,
        SmartRefreshToken.revoked_at.is_(None)).values(revoked_at=now))
    session.execute(update(ApiToken).where(
        ApiToken.smart_client_id == client_pk, ApiToken.user_id == user_id,
        ApiToken.revoked_at.is_(None)).values(revoked_at=now))
    logger.warning("SMART app %s: every token for user %s revoked after a replayed credential", client_pk, user_id)


def revoke(session: Session, form: dict[str, str], token_url: str) -> None:
    """RFC 7009: revoke an access or refresh token of the calling app; unknown tokens are fine."""
    client = authenticate_client(session, form, token_url)
    digest = _sha256(form.get("token", ""))
    now = utcnow()
    session.execute(update(SmartRefreshToken).where(
        SmartRefreshToken.token_sha256 == digest, SmartRefreshToken.smart_client_id == client.id,
        SmartRefreshToken.revoked_at.is_(None)).values(revoked_at=now))
    session.execute(update(ApiToken).where(
        ApiToken.token_sha256 == digest, ApiToken.smart_client_id == client.id,
        ApiToken.revoked_at.is_(None)).values(revoked_at=now))


# --- EHR launch ---------------------------------------------------------------------------------


def create_launch(session: Session, user: User, client_id: str, patient_id: int) -> str:
    """The platform opens an app for `user` with `patient_id` in context: an opaque launch value."""
    client = client_by_id(session, client_id)
    if client is None or not client.redirect_uris:
        raise OAuthError("invalid_client", "unknown user-facing app", 404)
    if not can_access_patient(session, user, patient_id):
        raise OAuthError("access_denied", "you may not open this patient's record", 403)
    launch = secrets.token_urlsafe(24)
    session.add(SmartLaunch(launch_sha256=_sha256(launch), smart_client_id=client.id, user_id=user.id,
                            patient_id=patient_id, expires_at=utcnow() + timedelta(seconds=LAUNCH_SECONDS)))
    session.flush()
    return launch


# --- client authentication and backend services -------------------------------------------------


def authenticate_client(session: Session, form: dict[str, str], token_url: str) -> SmartClient:
    """A public app names itself; an app with keys proves itself with a signed JWT (private_key_jwt)."""
    assertion = form.get("client_assertion")
    if assertion:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}", 401)
        return _verify_assertion(session, assertion, token_url)
    client = client_by_id(session, form.get("client_id", ""))
    if client is None:
        raise OAuthError("invalid_client", "unknown client_id", 401)
    if client.jwks is not None or client.jwks_uri is not None:
        raise OAuthError("invalid_client", "this app must authenticate with a signed client_assertion", 401)
    return client


def _unverified_issuer(assertion: str) -> str:
    try:
        payload = assertion.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise OAuthError("invalid_client", "client_assertion is not a JWT", 401) from exc
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    if not isinstance(issuer, str):
        raise OAuthError("invalid_client", "client_assertion has no iss", 401)
    return issuer


def _key_set(client: SmartClient) -> Any:
    if client.jwks is not None:
        keys = json.loads(client.jwks)
    else:
        try:
            answer = requests.get(client.jwks_uri or "", timeout=JWKS_FETCH_TIMEOUT_SECONDS)
            answer.raise_for_status()
            keys = answer.json()
        except (requests.RequestException, ValueError) as exc:
            raise OAuthError("invalid_client", f"the app's JWKS URL could not be read: {exc}", 401) from exc
    try:
        return _import_keys(keys)
    except ValueError as exc:
        raise OAuthError("invalid_client", str(exc), 401) from exc


def _import_keys(value: object) -> KeySet:
    """A JSON Web Key Set, or ValueError naming what is wrong with it."""
    if not isinstance(value, dict) or not isinstance(value.get("keys"), list):
        raise ValueError('the JWKS is not a valid key set: it must be an object with a "keys" list')
    try:
        return KeySet.import_key_set(cast("KeySetSerialization", value))
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the JWKS is not a valid key set: {exc}") from exc


def _verify_assertion(session: Session, assertion: str, token_url: str) -> SmartClient:
    client_id = _unverified_issuer(assertion)  # only to find the keys; the signature decides
    client = client_by_id(session, client_id)
    if client is None or (client.jwks is None and client.jwks_uri is None):
        raise OAuthError("invalid_client", "unknown client, or one without keys", 401)
    registry = jwt.JWTClaimsRegistry(
        leeway=30, iss={"essential": True, "value": client_id}, sub={"essential": True, "value": client_id},
        aud={"essential": True, "value": token_url}, exp={"essential": True}, jti={"essential": True})
    try:
        claims = jwt.decode(assertion, _key_set(client), algorithms=ASSERTION_ALGORITHMS).claims
        registry.validate(claims)
    except (JoseError, ValueError) as exc:
        raise OAuthError("invalid_client", f"client_assertion rejected: {exc}", 401) from exc
    now = int(utcnow().timestamp())
    exp = int(claims["exp"])
    if exp > now + MAX_ASSERTION_SECONDS + 30:
        raise OAuthError("invalid_client", "client_assertion must expire within five minutes", 401)
    jti = str(claims["jti"])
    seen = session.scalar(select(SmartAssertionUse).where(SmartAssertionUse.smart_client_id == client.id,
                                                          SmartAssertionUse.jti == jti))
    if seen is not None:
        raise OAuthError("invalid_client", "client_assertion jti was already used", 401)
    session.add(SmartAssertionUse(smart_client_id=client.id, jti=jti[:200],
                                  expires_at=utcnow() + timedelta(seconds=MAX_ASSERTION_SECONDS + 60)))
    session.flush()
    return client


def client_credentials(session: Session, form: dict[str, str], token_url: str) -> TokenGrant:
    """SMART Backend Services: a signed assertion buys a system/ token acting as the service account."""
    if not form.get("client_assertion"):
        raise OAuthError("invalid_client", "client_credentials needs a signed client_assertion", 401)
    client = authenticate_client(session, form, token_url)
    _check_scope(client, form.get("scope", ""), user_facing=False)
    user = session.get(User, client.service_user_id) if client.service_user_id is not None else None
    if user is None or not user.active:
        raise OAuthError("invalid_client", "the app's service account is missing or inactive", 401)
    return _issue(session, client, user, form["scope"], None, with_refresh=False)
