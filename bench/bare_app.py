"""The framework ceiling for bench/http_hotpaths.py: a bare Flask app under the same gunicorn
settings, answering the same paths with a small fixed FHIR JSON body, no database, no auth, no
audit. Our endpoints are quoted as a ratio of this one measured in the same run."""

from __future__ import annotations

from flask import Flask, Response, json

app = Flask(__name__)

PATIENT = {
    "resourceType": "Patient", "id": "1", "meta": {"versionId": "1"},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-0001"}],
    "name": [{"family": "Rivera", "given": ["Alex"]}], "gender": "female", "birthDate": "1980-04-02",
}
BUNDLE = {"resourceType": "Bundle", "type": "searchset", "total": 10,
          "entry": [{"resource": {**PATIENT, "id": str(n)}} for n in range(10)]}


@app.get("/fhir/Patient/<int:_id>")
def patient(_id: int) -> Response:
    return Response(json.dumps(PATIENT), mimetype="application/fhir+json")


@app.get("/fhir/Observation")
def observations() -> Response:
    return Response(json.dumps(BUNDLE), mimetype="application/fhir+json")


@app.get("/fhir/metadata")
def metadata() -> Response:
    return Response(json.dumps({"resourceType": "CapabilityStatement", "status": "active"}),
                    mimetype="application/fhir+json")


@app.get("/healthz")
def health() -> Response:
    return Response("ok")
