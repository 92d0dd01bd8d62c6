"""Every route of the app, for every role and for nobody: no 500s, no anonymous access outside the
public routes, and no role past a `require_roles` guard that does not name it.

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

# Reachable without signing in: the sign-in itself, health, static files, the FHIR and OpenAPI
# descriptions, and the home page (which sends a visitor to the login page).
PUBLIC_ENDPOINTS = {"web.login", "web.health", "web.home", "static", "web.static", "api.create_token",
                    "fhir.capability_statement", "openapi.spec"}
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
        elif endpoint in PUBLIC_ENDPOINTS:
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
