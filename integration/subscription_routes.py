"""FHIR REST for subscriptions: the topics on offer (SubscriptionTopic, read and search), and a
user's own Subscriptions (create, read, search, stop with DELETE, `$status`). Mounted under /fhir
beside the generic routes; these static paths take precedence over `/fhir/<type>`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, request

from hospital.auth import current_user
from hospital.db import request_session
from hospital.errors import NotFound
from hospital.fhir.routes import fhir_response, parse_body_resource, request_json
from integration import subscriptions

logger = logging.getLogger(__name__)

bp = Blueprint("fhir_subscriptions", __name__, url_prefix="/fhir")


def _base() -> str:
    return request.url_root + "fhir"


def _searchset(resources: list[dict[str, Any]], type_name: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "link": [{"relation": "self", "url": f"{_base()}/{type_name}"}],
            "entry": [{"fullUrl": f"{_base()}/{type_name}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                      for r in resources]}


@bp.get("/SubscriptionTopic")
def search_topics() -> Response:
    current_user()
    return fhir_response(_searchset([subscriptions.topic_to_fhir(t) for t in subscriptions.TOPICS.values()],
                                    "SubscriptionTopic"))


@bp.get("/SubscriptionTopic/<topic_id>")
def read_topic(topic_id: str) -> Response:
    current_user()
    for topic in subscriptions.TOPICS.values():
        if topic.key == topic_id:
            return fhir_response(subscriptions.topic_to_fhir(topic))
    raise NotFound(f"SubscriptionTopic/{topic_id} does not exist")


@bp.post("/Subscription")
def create_subscription() -> Response:
    user = current_user()
    session = request_session()
    resource = parse_body_resource(request_json(), "Subscription")
    row = subscriptions.create_subscription(session, user, resource)
    body = subscriptions.subscription_to_fhir(row, _base())
    return fhir_response(body, 201, {"Location": f"{_base()}/Subscription/{row.id}"})


@bp.get("/Subscription")
def search_subscriptions() -> Response:
    """A user's own subscriptions (no one searches another's)."""
    user = current_user()
    rows = subscriptions.own_subscriptions(request_session(), user)
    return fhir_response(_searchset([subscriptions.subscription_to_fhir(r, _base()) for r in rows], "Subscription"))


@bp.get("/Subscription/<subscription_id>")
def read_subscription(subscription_id: str) -> Response:
    row = subscriptions.owned_subscription(request_session(), current_user(), subscription_id)
    return fhir_response(subscriptions.subscription_to_fhir(row, _base()))


@bp.delete("/Subscription/<subscription_id>")
def stop_subscription(subscription_id: str) -> Response:
    """Stops it (status off): the events already numbered for it are still delivered."""
    subscriptions.stop_subscription(request_session(), current_user(), subscription_id)
    return fhir_response(None, 204)


@bp.get("/Subscription/<subscription_id>/$status")
def subscription_status(subscription_id: str) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return fhir_response(subscriptions.status_bundle(request_session(), app, current_user(), subscription_id))
