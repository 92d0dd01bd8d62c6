"""Every route of the app, for every role and for nobody: no 500s, no anonymous access outside the
public routes, and no role past a `require_roles` guard that does not name it. Then, for every state
of a care relationship (none, live, lapsed, revoked, another centre, emergency access open or ended), who reads a patient's report
on each surface (API, page, FHIR read/history/search/_revinclude). The pharmacist's rows of the
policy table are in test_least_privilege.py.

The routes come from `app.url_map`, so a route added later is covered without touching this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from hospital.models import Role
from hospital.seed import DemoSeed
from tests.security.care_world import add_relationship, make_care_world

# Reachable without signing in: the sign-in itself, health, static files, the FHIR and OpenAPI
# descriptions, the home page (which sends a visitor to the login page), and readiness (no patient data).
PUBLIC_ENDPOINTS = {"web.login", "web.choose_language", "web.health", "readiness.ready", "web.home", "static", "web.static", "web.favicon", "api.create_token",
                    "fhir.capability_statement", "openapi.spec",
                    # SMART on FHIR: discovery, and the OAuth endpoints that check the app themselves
                    # (authorize checks the app and redirect URI before it sends the user to sign in).
                    "smart.well_known", "smart.authorize", "smart.token", "smart.revoke_token"}
# These end the caller's own session; they run last so the matrix keeps its tokens until then.
SESSION_ENDERS = {"api.revoke", "web.logout"}
SAMPLE_ARGUMENTS = {"int": "999999", "default": "999999", "path": "robots.txt"}
SAMPLE_NAMED = {"type_name": "Patient", "filename": "robots.txt"}
API_PREFIXES = ("/api", "/fhir", "/dicomweb", "/wado")


def sample_url(rule: Rule) -> str:
    """The rule with each variable filled in: ids that exist nowhere, a real FHIR type."""
    def fill(match: re.Match[str]) -> str:
        converter, name = match.group(1) or "default", match.group(2)
        return SAMPLE_NAMED.get(name) or SAMPLE_ARGUMENTS.get(converter, "999999")

    return re.sub(r"<(?:([a-z]+)(?:\([^)]*\))?:)?([a-z_]+)>", fill, rule.rule)


def requests_of(app: Flask) -> Iterator[tuple[str, str, str]]:
    """(endpoint, method, url) for every rule and method, session enders last."""
    rules = sorted(app.url_map.iter_rules(), key=lambda r: (r.endpoint in SESSION_ENDERS, r.rule))
    for rule in rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, sample_url(rule)


def allowed_roles(view: Any) -> frozenset[Role] | None:
    """The roles a `require_roles(...)` guard on this view admits; None when it has no such guard
    (or admits every signed-in role)."""
    while view is not None:
        if view.__code__.co_qualname.startswith("require_roles.") and view.__closure__:
            cells = dict(zip(view.__code__.co_freevars, (c.cell_contents for c in view.__closure__), strict=True))
            return frozenset(cells["roles"]) or None
        view = getattr(view, "__wrapped__", None)
    return None


def send(client: FlaskClient, method: str, url: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method in {"POST", "PUT", "PATCH"}:
        if url.startswith("/fhir"):
            kwargs.update(data="{}", content_type="application/fhir+json")
        elif url.startswith(API_PREFIXES):
            kwargs["json"] = {}
        else:
            kwargs["data"] = {}
    return client.open(url, method=method, **kwargs)


def test_anonymous_callers_are_refused_everywhere_but_the_public_routes(app: Flask, demo: DemoSeed) -> None:
    client = app.test_client()
    with client.session_transaction() as cookie:
        cookie["csrf_token"] = "matrix"  # so unsafe requests reach the authentication check
    problems = []
    for endpoint, method, url in requests_of(app):
        response = send(client, method, url, {"X-CSRF-Token": "matrix"})
        status = response.status_code
        if status >= 500:
            problems.append(f"{method} {url}: {status}")
        elif endpoint in PUBLIC_ENDPOINTS or endpoint.endswith(".static"):  # a blueprint's CSS and scripts
            continue
        elif url.startswith(API_PREFIXES):
            if status != 401:
                problems.append(f"{method} {url}: anonymous got {status}, expected 401")
        elif not (status == 401 or (status == 302 and "/login" in response.headers.get("Location", ""))):
            problems.append(f"{method} {url}: anonymous got {status}, expected a redirect to /login")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("role", [role.value for role in Role])
def test_each_role_gets_no_500_and_no_route_its_role_guard_refuses(
    app: Flask, demo: DemoSeed, as_role: Any, role: str
) -> None:
    user = as_role(role)
    problems = []
    for endpoint, method, url in requests_of(app):
        response = send(user.client, method, url, user.headers)
        status = response.status_code
        if status >= 500:
            problems.append(f"{method} {url}: {status} {response.get_data(as_text=True)[:200]}")
            continue
        if status == 401 and endpoint not in SESSION_ENDERS and endpoint not in PUBLIC_ENDPOINTS:
            problems.append(f"{method} {url}: a signed-in {role} got 401")
        roles = allowed_roles(app.view_functions[endpoint])
        if roles is not None and Role(role) not in roles and status not in (403, 404):
            problems.append(f"{method} {url}: {role} is not among {sorted(r.value for r in roles)} but got {status}")
    assert not problems, "\n".join(problems)


# --- care relationships: who reads a patient's report, by the state of their tie to the patient ---

# state of the demo clinician's (and through a referral, the demo centre's) tie to demo.patient ->
# (the clinician may read, the centre's staff and radiologists may read).
RELATIONSHIP_STATES = {
    "none": (False, False),
    "referral:active": (True, True),
    "referral:accepted": (True, True),
    "referral:scheduled": (True, True),
    "referral:in-progress": (True, True),
    "referral:completed": (True, True),
    "referral:completed:long-ago": (False, True),  # the centre performed it and keeps its images
    "referral:cancelled": (False, False),
    "referral:rejected": (False, False),
    "consultation:planned": (True, False),
    "consultation:in-progress": (True, False),
    "consultation:finished": (True, False),
    "consultation:finished:long-ago": (False, False),
    "consultation:cancelled": (False, False),
    # Emergency access opens the record to the clinician who broke the glass, no one else, until it ends.
    "emergency:active": (True, False),
    "emergency:expired": (False, False),
}


def report_surfaces(report_id: int, patient_id: int) -> dict[str, str]:
    return {
        "api": f"/api/reports/{report_id}",
        "page": f"/reports/{report_id}",
        "pdf": f"/reports/{report_id}/report.pdf",
        "fhir document": f"/fhir/DocumentReference/{report_id}",
        "fhir read": f"/fhir/DiagnosticReport/{report_id}",
        "fhir history": f"/fhir/DiagnosticReport/{report_id}/_history",
        "fhir search": f"/fhir/DiagnosticReport?patient=Patient/{patient_id}",
        "fhir _revinclude": f"/fhir/Patient?_id={patient_id}&_revinclude=DiagnosticReport:patient",
        "fhir type history": "/fhir/DiagnosticReport/_history",
    }


def sees_report(client: Any, surface: str, url: str, report_id: int) -> bool:
    response = client.get(url)
    if surface in ("fhir search", "fhir _revinclude", "fhir type history"):
        assert response.status_code == 200, response.get_data(as_text=True)
        entries = response.get_json().get("entry", [])
        return any(e.get("resource", {}).get("resourceType") == "DiagnosticReport"
                   and e["resource"].get("id") == str(report_id) for e in entries)
    assert response.status_code in (200, 403), f"{surface} {url}: {response.status_code}"
    return response.status_code == 200


@pytest.mark.parametrize("state", list(RELATIONSHIP_STATES))
def test_report_access_follows_the_care_relationship(
    app: Flask, as_role: Any, db_session: Any, demo: DemoSeed, state: str
) -> None:
    world = make_care_world(db_session, demo)
    add_relationship(db_session, demo, world, state)
    db_session.commit()
    clinician_may, centre_may = RELATIONSHIP_STATES[state]
    expected = {"clinician": clinician_may, "imaging_staff": centre_may, "radiologist": centre_may,
                "far_staff": False, "patient": True, "patient2": False, "pharmacist": False}
    problems = []
    for username, may in expected.items():
        client = as_role(username)
        for surface, url in report_surfaces(world.report.id, demo.patient.id).items():
            if sees_report(client, surface, url, world.report.id) != may:
                problems.append(f"{username} via {surface}: expected {'access' if may else 'no access'}")
    assert not problems, f"state {state}:\n" + "\n".join(problems)
