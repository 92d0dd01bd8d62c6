"""SMART on FHIR against the app served over HTTP, driven by a client nobody here wrote: Authlib's
requests `OAuth2Session` (authorization code with PKCE S256, refresh, and private_key_jwt client
credentials), with a `requests` browser session signing the user in and answering the consent
screen. Plus the hostile cases: wrong verifier, a reused code, a redirect URI that differs, scope
escalation, an expired token, a patient/ token reaching for another patient, a replayed refresh
token or client assertion."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fhirclient import client
from fhirclient import server as server_errors
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient as FhirPatient
from flask import Flask
from sqlalchemy import select, update
from werkzeug.serving import make_server

from hospital.auth import revoke_user_tokens
from hospital.cli import smart_client_group
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.models import ApiToken, AuditEvent, SmartClient, User
from hospital.seed import DEMO_PASSWORD, seed_demo
from hospital.smart import register_client
from tests.conftest import make_test_app

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the test reads the Location header


@dataclass
class Live:
    base: str
    app: Flask
    patient_id: int
    other_patient_id: int

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"

    def register(self, **kwargs: Any) -> str:
        with self.app.app_context(), get_db(self.app).transaction() as session:
            service = kwargs.pop("service_username", None)
            user = session.scalar(select(User).where(User.username == service)) if service else None
            return register_client(session, service_user=user, **kwargs).client_id


@pytest.fixture()
def live(live_database: str, tmp_path: Path) -> Iterator[Live]:
    app = make_test_app(live_database, tmp_path)
    with app.app_context(), get_db(app).transaction() as session:
        seed = seed_demo(session, app)
        ids = (seed.patient.id, seed.other_patient.id)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(f"http://127.0.0.1:{server.server_port}", app, *ids)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        get_db(app).engine.dispose()


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def browser(live: Live, username: str) -> requests.Session:
    """A user signed in on the platform's own sign-in page, as their browser would be."""
    web = requests.Session()
    page = web.get(f"{live.base}/login", timeout=10)
    answer = web.post(f"{live.base}/login", data={"csrf_token": _csrf(page.text), "username": username,
                                                  "password": DEMO_PASSWORD}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text[:300]
    return web


def consent(web: requests.Session, live: Live, authorize_url: str, *, decision: str = "approve",
            patient: int | None = None) -> requests.Response:
    """Open the consent screen and answer it; returns the redirect to the app."""
    page = web.get(authorize_url, allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text[:500]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    fields = {name: value.replace("&amp;", "&") for name, value in fields.items()}
    fields["decision"] = decision
    if patient is not None:
        assert f'<option value="{patient}">' in page.text
        fields["patient"] = str(patient)
    return web.post(f"{live.base}/oauth/authorize", data=fields, allow_redirects=False, timeout=10)


def app_session(client_id: str, scope: str) -> OAuth2Session:
    return OAuth2Session(client_id, redirect_uri=REDIRECT, scope=scope, code_challenge_method="S256",
                         token_endpoint_auth_method="none")


def standalone_launch(live: Live, client_id: str, username: str, scope: str,
                      patient: int | None = None) -> tuple[OAuth2Session, dict[str, Any]]:
    app = app_session(client_id, scope)
    verifier = uuid.uuid4().hex + uuid.uuid4().hex
    url, state = app.create_authorization_url(f"{live.base}/oauth/authorize", code_verifier=verifier, aud=live.fhir)
    answer = consent(browser(live, username), live, url, patient=patient)
    assert answer.status_code == 302
    token = app.fetch_token(f"{live.base}/oauth/token", authorization_response=answer.headers["Location"],
                            code_verifier=verifier)
    return app, dict(token)


def fhir_get(live: Live, token: str, path: str) -> requests.Response:
    return requests.get(f"{live.fhir}/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_discovery_at_both_well_known_urls_and_in_the_capability_statement(live: Live) -> None:
    for url in (f"{live.base}/.well-known/smart-configuration", f"{live.fhir}/.well-known/smart-configuration"):
        config = requests.get(url, timeout=10).json()
        assert config["code_challenge_methods_supported"] == ["S256"]
        assert config["token_endpoint"] == f"{live.base}/oauth/token"
        assert {"authorization_code", "client_credentials", "refresh_token"} <= set(config["grant_types_supported"])
        assert "launch-standalone" in config["capabilities"] and "permission-v2" in config["capabilities"]
        assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    security = requests.get(f"{live.fhir}/metadata", timeout=10).json()["rest"][0]["security"]
    uris = {ext["url"]: ext["valueUri"] for ext in security["extension"][0]["extension"]}
    assert security["extension"][0]["url"].endswith("/oauth-uris")
    assert uris["authorize"] == f"{live.base}/oauth/authorize"


def test_patient_standalone_launch_reads_own_record_refreshes_and_is_audited(live: Live) -> None:
    client_id = live.register(name="My results", scopes="launch/patient patient/*.rs offline_access",
                              redirect_uris=[REDIRECT])
    app, token = standalone_launch(live, client_id, "patient", "launch/patient patient/*.rs offline_access")
    assert token["patient"] == str(live.patient_id)
    assert token["scope"] == "launch/patient patient/*.rs offline_access"
    own = app.get(f"{live.fhir}/Patient/{live.patient_id}", timeout=10)
    assert own.status_code == 200 and own.json()["id"] == str(live.patient_id)
    assert fhir_get(live, token["access_token"], f"Patient/{live.other_patient_id}").status_code == 403
    # The token is for /fhir only.
    assert requests.get(f"{live.base}/api/me", headers={"Authorization": f"Bearer {token['access_token']}"},
                        timeout=10).status_code == 401
    with live.app.app_context(), get_db(live.app).transaction() as session:
        sources = set(session.scalars(select(AuditEvent.source).where(AuditEvent.entity_type == "Patient")))
    assert f"smart:{client_id}" in sources

    # Rotation: the refresh token is spent; presenting it again revokes what it bought.
    old_refresh = token["refresh_token"]
    renewed = app.refresh_token(f"{live.base}/oauth/token", refresh_token=old_refresh)
    assert renewed["refresh_token"] != old_refresh
    assert fhir_get(live, renewed["access_token"], f"Patient/{live.patient_id}").status_code == 200
    replay = requests.post(f"{live.base}/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                             "refresh_token": old_refresh}, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert fhir_get(live, renewed["access_token"], f"Patient/{live.patient_id}").status_code == 401

    # Revocation (RFC 7009).
    _, fresh = standalone_launch(live, client_id, "patient", "launch/patient patient/*.rs")
    revoked = requests.post(f"{live.base}/oauth/revoke", data={"client_id": client_id,
                                                               "token": fresh["access_token"]}, timeout=10)
    assert revoked.status_code == 200
    assert fhir_get(live, fresh["access_token"], f"Patient/{live.patient_id}").status_code == 401


def test_patient_scope_holds_an_administrator_to_the_chosen_patient(live: Live) -> None:
    client_id = live.register(name="Viewer", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    _, token = standalone_launch(live, client_id, "admin", "launch/patient patient/*.rs", patient=live.patient_id)
    assert token["patient"] == str(live.patient_id)
    assert fhir_get(live, token["access_token"], f"Patient/{live.patient_id}").status_code == 200
    other = fhir_get(live, token["access_token"], f"Patient/{live.other_patient_id}")
    assert other.status_code == 403
    assert other.json()["resourceType"] == "OperationOutcome"
    # A search sees the launch patient only, though the administrator sees everyone.
    found = fhir_get(live, token["access_token"], "Patient").json()
    assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [str(live.patient_id)]
    # Writes are beyond .rs, and Bundles are closed to app tokens.
    write = requests.put(f"{live.fhir}/Patient/{live.patient_id}", json={"resourceType": "Patient"},
                         headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10)
    assert write.status_code == 403


def test_resource_level_scope_limits_the_types(live: Live) -> None:
    client_id = live.register(name="Results", scopes="launch/patient patient/Observation.rs",
                              redirect_uris=[REDIRECT])
    _, token = standalone_launch(live, client_id, "patient", "launch/patient patient/Observation.rs")
    assert fhir_get(live, token["access_token"], "Observation").status_code == 200
    refused = fhir_get(live, token["access_token"], f"Patient/{live.patient_id}")
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"


def test_ehr_launch_carries_the_patient_from_the_platform(live: Live) -> None:
    client_id = live.register(name="Chart app", scopes="launch patient/*.read", redirect_uris=[REDIRECT])
    api_token = requests.post(f"{live.base}/api/auth/token", json={"username": "admin", "password": DEMO_PASSWORD},
                              timeout=10).json()["access_token"]
    launched = requests.post(f"{live.base}/api/smart/launches", json={"client_id": client_id,
                                                                      "patient_id": live.other_patient_id},
                             headers={"Authorization": f"Bearer {api_token}"}, timeout=10)
    assert launched.status_code == 201, launched.text
    app = app_session(client_id, "launch patient/*.read")
    verifier = "v" * 64
    url, _ = app.create_authorization_url(f"{live.base}/oauth/authorize", code_verifier=verifier, aud=live.fhir,
                                          launch=launched.json()["launch"])
    answer = consent(browser(live, "admin"), live, url)
    token = app.fetch_token(f"{live.base}/oauth/token", authorization_response=answer.headers["Location"],
                            code_verifier=verifier)
    assert token["patient"] == str(live.other_patient_id)
    assert "refresh_token" not in token  # neither offline_access nor online_access was asked for


def _authorize_for_code(live: Live, client_id: str, scope: str, verifier: str) -> tuple[str, str]:
    app = app_session(client_id, scope)
    url, _ = app.create_authorization_url(f"{live.base}/oauth/authorize", code_verifier=verifier, aud=live.fhir)
    location = consent(browser(live, "patient"), live, url).headers["Location"]
    return parse_qs(urlsplit(location).query)["code"][0], location


def test_hostile_code_exchanges_are_refused(live: Live) -> None:
    client_id = live.register(name="App", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    verifier = "a" * 50
    code, _ = _authorize_for_code(live, client_id, "launch/patient patient/*.rs", verifier)
    token_url = f"{live.base}/oauth/token"
    base = {"grant_type": "authorization_code", "client_id": client_id, "code": code, "redirect_uri": REDIRECT}
    wrong = requests.post(token_url, data={**base, "code_verifier": "b" * 50}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    moved = requests.post(token_url, data={**base, "redirect_uri": REDIRECT + "x", "code_verifier": verifier},
                          timeout=10)
    assert moved.status_code == 400 and moved.json()["error"] == "invalid_grant"
    good = requests.post(token_url, data={**base, "code_verifier": verifier}, timeout=10)
    assert good.status_code == 200, good.text
    access = good.json()["access_token"]
    reused = requests.post(token_url, data={**base, "code_verifier": verifier}, timeout=10)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # The replayed code withdrew what it had bought.
    assert fhir_get(live, access, f"Patient/{live.patient_id}").status_code == 401


def test_hostile_authorization_requests_are_refused(live: Live) -> None:
    client_id = live.register(name="App", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    web = browser(live, "patient")
    challenge = create_s256_code_challenge("c" * 50)
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "aud": live.fhir,
             "scope": "launch/patient patient/*.rs", "state": "s1", "code_challenge": challenge,
             "code_challenge_method": "S256"}
    authorize = f"{live.base}/oauth/authorize"
    # A redirect URI not registered: an error page, never a redirect to it.
    stray = web.get(authorize, params={**query, "redirect_uri": "https://evil.example/cb"}, allow_redirects=False,
                    timeout=10)
    assert stray.status_code == 400 and "Location" not in stray.headers
    # Scope escalation beyond the registration, and plain PKCE: sent back to the app with the error.
    for changed, error in (({"scope": "launch/patient user/*.cruds"}, "invalid_scope"),
                           ({"scope": "system/*.rs"}, "invalid_scope"),
                           ({"code_challenge_method": "plain"}, "invalid_request")):
        answer = web.get(authorize, params={**query, **changed}, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, changed
        params = parse_qs(urlsplit(answer.headers["Location"]).query)
        assert params["error"] == [error] and params["state"] == ["s1"]
    denied = consent(web, live, requests.Request("GET", authorize, params=query).prepare().url or "",
                     decision="deny")
    assert parse_qs(urlsplit(denied.headers["Location"]).query)["error"] == ["access_denied"]


def test_expired_token_is_refused_with_an_operation_outcome(live: Live) -> None:
    client_id = live.register(name="App", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    _, token = standalone_launch(live, client_id, "patient", "launch/patient patient/*.rs")
    with live.app.app_context(), get_db(live.app).transaction() as session:
        session.execute(update(ApiToken).where(ApiToken.smart_client_id.is_not(None))
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    expired = fhir_get(live, token["access_token"], f"Patient/{live.patient_id}")
    assert expired.status_code == 401 and expired.json()["resourceType"] == "OperationOutcome"


def test_backend_service_with_private_key_jwt(live: Live) -> None:
    key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "k1"})
    client_id = live.register(name="Nightly export", scopes="system/*.rs",
                              jwks={"keys": [key.as_dict(is_private=False)]}, service_username="admin")
    token_url = f"{live.base}/oauth/token"
    service = OAuth2Session(client_id, key.as_pem(is_private=True), scope="system/*.rs",
                            token_endpoint_auth_method=PrivateKeyJWT(
                                token_url, alg="RS384", headers={"kid": "k1"},
                                claims={"exp": int(time.time()) + 240, "jti": uuid.uuid4().hex}))
    token = service.fetch_token(token_url, grant_type="client_credentials")
    assert token["scope"] == "system/*.rs" and "refresh_token" not in token
    assert service.get(f"{live.fhir}/Patient/{live.other_patient_id}", timeout=10).status_code == 200

    def assertion(signing_key: Any, **claims: Any) -> str:
        body = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": int(time.time()) + 240,
                "jti": uuid.uuid4().hex, **claims}
        return jwt.encode({"alg": "RS384", "kid": "k1"}, body, signing_key).decode()

    def ask(signed: str, scope: str = "system/*.rs") -> requests.Response:
        return requests.post(token_url, timeout=10, data={
            "grant_type": "client_credentials", "scope": scope, "client_assertion": signed,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})

    once = assertion(key)
    assert ask(once).status_code == 200
    assert ask(once).json()["error"] == "invalid_client"  # the same jti again
    stranger = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    assert ask(assertion(stranger)).status_code == 401
    assert ask(assertion(key, exp=int(time.time()) + 3600)).status_code == 401  # lives too long
    escalation = ask(assertion(key), scope="system/*.cruds")
    assert escalation.status_code == 400 and escalation.json()["error"] == "invalid_scope"
    # A public app may not take client credentials.
    public_id = live.register(name="Public", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    public = requests.post(token_url, data={"grant_type": "client_credentials", "client_id": public_id,
                                            "scope": "system/*.rs"}, timeout=10)
    assert public.status_code == 401


def test_registration_refuses_incomplete_apps(live: Live) -> None:
    with pytest.raises(ValueError, match="redirect URI"):
        live.register(name="No redirect", scopes="patient/*.rs")
    with pytest.raises(ValueError, match="backend"):
        live.register(name="No keys", scopes="system/*.rs", redirect_uris=[REDIRECT])
    with pytest.raises(ValueError, match="letters in the order cruds"):
        live.register(name="Odd", scopes="patient/*.everything", redirect_uris=[REDIRECT])
    with pytest.raises(ValueError, match="query-constrained"):
        live.register(name="Narrow", scopes="patient/Observation.rs?category=laboratory", redirect_uris=[REDIRECT])
    with live.app.app_context(), get_db(live.app).transaction() as session:
        assert session.scalar(select(SmartClient.id)) is None


def test_fhirclient_completes_a_standalone_launch_and_a_backend_services_token(live: Live) -> None:
    """SMART's own Python client finds the endpoints in `metadata` (oauth-uris), sends PKCE, and
    reads within its scopes; outside them it gets the 403 it raises as permission denied."""
    client_id = live.register(name="fhirclient app", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    smart = client.FHIRClient(settings={"app_id": client_id, "api_base": f"{live.fhir}/", "redirect_uri": REDIRECT,
                                        "scope": "patient/*.rs"})
    url = smart.authorize_url
    assert url.startswith(f"{live.base}/oauth/authorize?") and "code_challenge_method=S256" in url
    smart.handle_callback(consent(browser(live, "patient"), live, url).headers["Location"])
    assert smart.patient_id == str(live.patient_id)
    assert FhirPatient.read(str(live.patient_id), smart.server).id == str(live.patient_id)
    with pytest.raises(server_errors.FHIRPermissionDeniedException):
        FhirPatient.read(str(live.other_patient_id), smart.server)

    key = JsonWebKey.generate_key("EC", "P-384", is_private=True)
    backend_id = live.register(name="fhirclient backend", scopes="system/Patient.rs",
                               jwks={"keys": [key.as_dict(is_private=False)]}, service_username="admin")
    token_url = f"{live.base}/oauth/token"
    assertion = jwt.encode({"alg": "ES384"}, {"iss": backend_id, "sub": backend_id, "aud": token_url,
                                              "exp": int(time.time()) + 240, "jti": uuid.uuid4().hex}, key).decode()
    backend = client.FHIRClient(settings={"app_id": backend_id, "api_base": f"{live.fhir}/", "jwt_token": assertion,
                                          "scope": "system/Patient.rs"})
    backend.wants_patient = False
    assert backend.prepare() is False
    backend.server.authorize()
    assert FhirPatient.read(str(live.other_patient_id), backend.server).id == str(live.other_patient_id)
    with pytest.raises(server_errors.FHIRPermissionDeniedException):
        list(Observation.where(struct={"_count": "1"}).perform_iter(backend.server))


def test_a_locked_or_reset_account_loses_its_apps_refresh_tokens(live: Live) -> None:
    client_id = live.register(name="Offline", scopes="launch/patient patient/*.rs offline_access",
                              redirect_uris=[REDIRECT])
    _, token = standalone_launch(live, client_id, "patient", "launch/patient patient/*.rs offline_access")
    with live.app.app_context(), get_db(live.app).transaction() as session:
        user = session.scalar(select(User).where(User.username == "patient"))
        assert user is not None
        revoke_user_tokens(session, user)
    refused = requests.post(f"{live.base}/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                              "refresh_token": token["refresh_token"]}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert fhir_get(live, token["access_token"], f"Patient/{live.patient_id}").status_code == 401


def test_cli_registers_and_lists_apps(live: Live, tmp_path: Path) -> None:
    runner = live.app.test_cli_runner()
    added = runner.invoke(smart_client_group, ["add", "--name", "Ward app", "--scope", "launch/patient patient/*.rs",
                                               "--redirect-uri", REDIRECT])
    assert added.exit_code == 0, added.output
    client_id = added.output.strip()
    key = JsonWebKey.generate_key("EC", "P-384", is_private=True)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(is_private=False)]}))
    backend = runner.invoke(smart_client_group, ["add", "--name", "Export", "--scope", "system/*.rs",
                                                 "--jwks-file", str(jwks_file), "--service-user", "admin"])
    assert backend.exit_code == 0, backend.output
    refused = runner.invoke(smart_client_group, ["add", "--name", "Half", "--scope", "system/*.rs",
                                                 "--service-user", "nobody"])
    assert refused.exit_code != 0 and "no user named 'nobody'" in refused.output
    listed = runner.invoke(smart_client_group, ["list"]).output
    assert f"{client_id}\tWard app\tlaunch/patient patient/*.rs" in listed and "Export" in listed

    _, token = standalone_launch(live, client_id, "patient", "launch/patient patient/*.rs")
    assert runner.invoke(smart_client_group, ["disable", client_id]).exit_code == 0
    assert fhir_get(live, token["access_token"], f"Patient/{live.patient_id}").status_code == 401
    assert f"{client_id}\tWard app (disabled)" in runner.invoke(smart_client_group, ["list"]).output
    again = app_session(client_id, "launch/patient patient/*.rs")
    url, _ = again.create_authorization_url(f"{live.base}/oauth/authorize", code_verifier="d" * 50, aud=live.fhir)
    assert browser(live, "patient").get(url, allow_redirects=False, timeout=10).status_code == 400
    assert runner.invoke(smart_client_group, ["disable", "no-such-app"]).exit_code != 0


def test_a_clinician_picks_only_among_patients_in_their_care(live: Live) -> None:
    client_id = live.register(name="Ward app", scopes="launch/patient patient/*.rs", redirect_uris=[REDIRECT])
    app = app_session(client_id, "launch/patient patient/*.rs")
    url, _ = app.create_authorization_url(f"{live.base}/oauth/authorize", code_verifier="q" * 50, aud=live.fhir)
    web = browser(live, "clinician")
    page = web.get(url, timeout=10)
    offered = {int(value) for value in re.findall(r'<option value="(\d+)">', page.text)}
    outside = next(pid for pid in (live.patient_id, live.other_patient_id) if pid not in offered)
    fields = {name: value.replace("&amp;", "&")
              for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)}
    forged = web.post(f"{live.base}/oauth/authorize", data={**fields, "decision": "approve", "patient": str(outside)},
                      allow_redirects=False, timeout=10)
    assert forged.status_code == 403 and "Location" not in forged.headers
    assert "may not open this patient" in forged.text
    in_chinese = web.post(f"{live.base}/oauth/authorize", data={**fields, "decision": "approve", "patient": str(outside)},
                          headers={"Accept-Language": "zh-CN"}, allow_redirects=False, timeout=10)
    assert in_chinese.status_code == 403 and "您无权打开该患者的病历" in in_chinese.text
    assert "所选患者的" in in_chinese.text  # the scope's line, in the reader's language too
    with live.app.app_context(), get_db(live.app).transaction() as session:
        denial = session.scalar(select(AuditEvent).where(AuditEvent.patient_id == outside, AuditEvent.outcome == 4))
    assert denial is not None and client_id in (denial.description or "")


def test_a_broken_jwks_url_refuses_the_app_and_the_server_carries_on(live: Live) -> None:
    """The app's JWKS URL answers something that is not a key set: the token request is refused as
    invalid_client (401, with the reason), never a server error."""
    import http.server

    answers = iter([b"not json", b'{"keys": "nope"}', b'{"keys": [{"kty": "zz"}]}'])

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = next(answers)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    keys = http.server.HTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=keys.serve_forever, daemon=True).start()
    try:
        client_id = live.register(name="Broken keys", scopes="system/*.rs", service_username="admin",
                                  jwks_uri=f"http://127.0.0.1:{keys.server_port}/jwks.json")
        token_url = f"{live.base}/oauth/token"
        key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "k1"})
        for _ in range(3):
            signed = jwt.encode({"alg": "RS384", "kid": "k1"}, {
                "iss": client_id, "sub": client_id, "aud": token_url, "exp": int(time.time()) + 240,
                "jti": uuid.uuid4().hex}, key).decode()
            answer = requests.post(token_url, timeout=10, data={
                "grant_type": "client_credentials", "scope": "system/*.rs", "client_assertion": signed,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"] == "invalid_client" and "JWKS" in answer.json()["error_description"]
    finally:
        keys.shutdown()
    assert requests.get(f"{live.fhir}/metadata", timeout=10).status_code == 200
