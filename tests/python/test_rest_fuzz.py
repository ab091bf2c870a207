"""The REST API against its own contract: schemathesis (PyPI) reads docs/openapi.json as the server
serves it at GET /v1/openapi.json, generates requests for every operation — valid ones, invalid
ones (wrong types, missing fields, unknown properties, other methods, missing or bad
credentials) and the document's examples — and checks every answer: no 5xx, a status the
document lists for the operation, the content type it lists, a body matching the response
schema, documented headers, invalid requests refused with a 4xx, undeclared methods 405, calls
without credentials refused.

It runs twice against one server with data and a registry: as a user holding every grant, and as
a user holding none. Generation is deterministic (a fixed seed, derandomized Hypothesis), so a
failure reproduces; schemathesis prints the failing request as a curl command.

Run through scripts/test.sh, or from the repository root:
    PITLAKE_BIN=target/debug/pitlake ~/.cache/pitlake-py-venv/bin/pytest -q tests/python/test_rest_fuzz.py
"""

import base64
import contextlib
import hashlib
import os
import secrets
import signal

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from test_flight import free_port, hash_password, run_pitlake, start_server
from test_rest import login, wait_for_http

# Names the document's examples do not use: the examples name `orders` and `driver_stats`, and an
# export example writes to /exports, which must stay a training set that does not resolve.
SETUP = """
CREATE TABLE fz_stats AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 00:00:00', 0.5, CAST(1.25 AS DECIMAL(8,2)), 'a'),
  (2, TIMESTAMP '2026-01-01 01:00:00', 0.9, CAST(2.50 AS DECIMAL(8,2)), 'b')
) AS v(fz_id, event_ts, rate, price, tag);
CREATE TABLE fz_labels AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-02 00:00:00', true),
  (2, TIMESTAMP '2026-01-02 00:00:00', false)
) AS v(fz_id, ts, label);
CREATE ENTITY fz_entity (fz_id BIGINT);
CREATE FEATURE VIEW fz_view ENTITY fz_entity FROM fz_stats EVENT TIME event_ts FEATURES (rate, price);
CREATE FEATURE VIEW fz_tags ENTITY fz_entity FROM fz_stats EVENT TIME event_ts
  AGGREGATES (last(tag, 2) OVER INTERVAL '7 days' AS last_tags);
CREATE OR REPLACE FEATURE VIEW fz_view ENTITY fz_entity FROM fz_stats EVENT TIME event_ts
  TTL INTERVAL '1 day' FEATURES (rate, price);
CREATE FEATURE SERVICE fz_service (fz_view.rate, fz_tags.last_tags);
REGISTER MODEL fz_model VERSION '1' SERVICE fz_service METADATA '{"auc": 0.5}';
"""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    ignored_auth,
]

EXAMPLES_PER_OPERATION = 50

# Each user's static bearer token (the auth file holds its SHA-256). Made here, not by a login in
# the fixture: schemathesis builds some requests (the document's examples, the coverage phase's)
# when pytest collects the tests, before any server runs.
TOKENS = {user: secrets.token_urlsafe(32) for user in ["owner", "nobody"]}


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    # A table whose log cannot be read: pitlake answers FAILED_PRECONDITION (docs/operations.md).
    run_pitlake(warehouse, "sql", "CREATE TABLE fz_broken AS SELECT 1 AS x")
    (warehouse / "fz_broken" / "_delta_log" / "00000000000000000000.json").write_text("{garbage\n")
    auth = root / "auth.toml"
    auth.write_text(
        f"""
[users.owner]
password_hash = "{hash_password(warehouse, 'owner-pw')}"
tokens = [{{ sha256 = "{sha256(TOKENS['owner'])}", expires = "2099-01-01T00:00:00Z" }}]
roles = ["everything"]
[users.nobody]
password_hash = "{hash_password(warehouse, 'nobody-pw')}"
tokens = [{{ sha256 = "{sha256(TOKENS['nobody'])}", expires = "2099-01-01T00:00:00Z" }}]
roles = []
[roles.everything]
grants = ["table:*", "view:*", "write:*", "registry:write", "files", "session"]
"""
    )
    http_port = free_port()
    # Relative export paths land in the server's working directory: a folder of the test's.
    workdir = root / "cwd"
    workdir.mkdir()
    with contextlib.chdir(workdir):
        process, log, _, log_path = start_server(
            root, warehouse, auth, "--http-listen", f"127.0.0.1:{http_port}",
            # Generated logins send wrong passwords. A lockout is a documented 429 (and
            # tests/python/test_flight.py tests it), but here a wrong password must stay a 401 for
            # every attempt, and the users' own logins must not be refused.
            "--max-failed-logins-per-peer", "1000000", "--max-failed-logins-per-user", "1000000",
        )
    base = f"http://127.0.0.1:{http_port}"
    wait_for_http(base, process, log_path)
    for user in TOKENS:
        assert login(base, user, f"{user}-pw")
    yield {"base": base, "process": process, "log": log_path}
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    log.close()
    assert code == 0, log_path.read_text()
    # The server never panicked on anything generated.
    assert "panicked" not in log_path.read_text()


# The document as the repository keeps it; the server serves it verbatim (checked below), so the
# tests are built when pytest collects them, before any server runs.
DOCUMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "openapi.json")


def load_schema(user):
    config = schemathesis.Config.from_dict(
        {
            "seed": 20260101,
            "generation": {
                "mode": "all",
                "max-examples": EXAMPLES_PER_OPERATION,
                "deterministic": True,
                "database": "none",
            },
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415", "429"],
                },
            },
        }
    )
    schema = schemathesis.openapi.from_path(DOCUMENT, config=config)

    @schema.auth(refresh_interval=None)
    class Credentials:
        """The `basic` scheme (POST /v1/login) gets the user's password, `bearer` its token."""

        def get(self, case, context):
            return TOKENS[user]

        def set(self, case, token, context):
            if case.operation.path == "/v1/login":
                basic = base64.b64encode(f"{user}:{user}-pw".encode()).decode()
                case.headers = {**(case.headers or {}), "Authorization": f"Basic {basic}"}
            else:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    return schema


owner = load_schema("owner")
nobody = load_schema("nobody")

HYPOTHESIS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


# Requests that succeed, which random generation rarely makes (a valid statement, an existing
# name): their answers must match the document too. (path, method, path parameters, query, body,
# Accept)
TRAINING_SET = "TRAINING SET LABELS fz_labels AT ts FEATURES (fz_view.*, fz_tags.last_tags)"
VALID = {
    "login": ("/v1/login", "POST", {}, {}, None, None),
    "query-arrow": ("/v1/query", "POST", {}, {}, {"sql": TRAINING_SET}, "application/vnd.apache.arrow.stream"),
    "query-parquet": ("/v1/query", "POST", {}, {}, {"sql": TRAINING_SET}, "application/vnd.apache.parquet"),
    "query-ndjson": ("/v1/query", "POST", {}, {}, {"sql": TRAINING_SET}, "application/x-ndjson"),
    "query-jsonl": ("/v1/query", "POST", {}, {}, {"sql": "SELECT 1 AS one"}, "application/jsonl"),
    "query-csv": ("/v1/query", "POST", {}, {}, {"sql": "SELECT * FROM fz_stats"}, "text/csv"),
    "statement": ("/v1/statements", "POST", {}, {}, {"sql": "CREATE ENTITY IF NOT EXISTS fz_spare (k BIGINT)"}, None),
    "export": ("/v1/exports", "POST", {}, {}, {"training_set": TRAINING_SET, "to": "EXPORT_TO", "format": "parquet"}, None),
    "list-entities": ("/v1/{kind}", "GET", {"kind": "entities"}, {}, None, None),
    "list-views-then": ("/v1/{kind}", "GET", {"kind": "feature-views"}, {"registry_version": 1}, None, None),
    "list-services": ("/v1/{kind}", "GET", {"kind": "feature-services"}, {}, None, None),
    "list-models": ("/v1/{kind}", "GET", {"kind": "models"}, {}, None, None),
    "describe-entity": ("/v1/{kind}/{name}", "GET", {"kind": "entities", "name": "fz_entity"}, {}, None, None),
    "describe-view-then": ("/v1/{kind}/{name}", "GET", {"kind": "feature-views", "name": "fz_view"},
                           {"registry_version": 1}, None, None),
    "describe-service": ("/v1/{kind}/{name}", "GET", {"kind": "feature-services", "name": "fz_service"}, {}, None, None),
    "describe-model": ("/v1/{kind}/{name}", "GET", {"kind": "models", "name": "fz_model"}, {"version": "1"}, None, None),
    "history": ("/v1/{kind}/{name}/history", "GET", {"kind": "feature-views", "name": "fz_view"}, {}, None, None),
    "history-model": ("/v1/{kind}/{name}/history", "GET", {"kind": "models", "name": "fz_model"}, {"version": "1"},
                      None, None),
    "diff": ("/v1/{kind}/{name}/diff", "GET", {"kind": "feature-views", "name": "fz_view"}, {"from": 1, "to": 3},
             None, None),
    "drop": ("/v1/{kind}/{name}", "DELETE", {"kind": "entities", "name": "fz_spare"}, {}, None, None),
}


def test_a_table_that_cannot_be_read_is_answered_with_a_documented_status(fuzzed):
    """Not generated (no random statement names the table), but a state the server can be in."""
    case = owner["/v1/query"]["POST"].Case(
        body={"sql": "SELECT * FROM fz_broken"}, headers={"Authorization": f"Bearer {TOKENS['owner']}"}
    )
    response = case.call_and_validate(base_url=fuzzed["base"], checks=CHECKS, timeout=60)
    assert response.status_code == 409


@pytest.mark.parametrize("name", list(VALID))
def test_successful_answers_match_the_document(fuzzed, name, tmp_path):
    path, method, path_parameters, query, body, accept = VALID[name]
    if body and body.get("to") == "EXPORT_TO":
        body = {**body, "to": str(tmp_path / "export.parquet")}
    if path == "/v1/login":
        headers = {"Authorization": "Basic " + base64.b64encode(b"owner:owner-pw").decode()}
    else:
        headers = {"Authorization": f"Bearer {TOKENS['owner']}"}
    if accept:
        headers["Accept"] = accept
    kwargs = {"body": body} if body is not None else {}
    case = owner[path][method].Case(path_parameters=path_parameters, query=query, headers=headers, **kwargs)
    response = case.call_and_validate(base_url=fuzzed["base"], checks=CHECKS, timeout=60)
    assert response.status_code == 200, response.text
    if accept:
        # The answer names the media type that was asked for.
        assert response.headers["content-type"][0].split(";")[0] == accept
        assert len(response.content) > 0


@owner.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract_for_a_user_with_every_grant(case, fuzzed):
    case.call_and_validate(base_url=fuzzed["base"], checks=CHECKS, timeout=60)


@nobody.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract_for_a_user_without_grants(case, fuzzed):
    case.call_and_validate(base_url=fuzzed["base"], checks=CHECKS, timeout=60)


def test_the_document_served_is_the_one_in_the_repository(fuzzed):
    served = requests.get(fuzzed["base"] + "/v1/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    with open(DOCUMENT, "rb") as f:
        assert served.content == f.read()
