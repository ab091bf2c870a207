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

import contextlib
import os
import signal

import pytest
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

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    auth = root / "auth.toml"
    auth.write_text(
        f"""
[users.owner]
password_hash = "{hash_password(warehouse, 'owner-pw')}"
roles = ["everything"]
[users.nobody]
password_hash = "{hash_password(warehouse, 'nobody-pw')}"
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
            # Generated logins guess passwords: a lockout is a documented 429, but the
            # users' own logins below must not be refused.
            "--max-failed-logins-per-peer", "1000000",
        )
    base = f"http://127.0.0.1:{http_port}"
    wait_for_http(base, process, log_path)
    tokens = {user: login(base, user, f"{user}-pw") for user in ["owner", "nobody"]}
    yield {"base": base, "tokens": tokens, "process": process, "log": log_path}
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    log.close()
    assert code == 0, log_path.read_text()
    # The server never panicked on anything generated.
    assert "panicked" not in log_path.read_text()


def load_schema(fuzzed, user):
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
            "auth": {
                "openapi": {
                    "bearer": {"bearer": fuzzed["tokens"][user]},
                    "basic": {"username": user, "password": f"{user}-pw"},
                },
            },
        }
    )
    return schemathesis.openapi.from_url(fuzzed["base"] + "/v1/openapi.json", config=config, timeout=30)


@pytest.fixture(scope="module")
def owner_schema(fuzzed):
    return load_schema(fuzzed, "owner")


@pytest.fixture(scope="module")
def nobody_schema(fuzzed):
    return load_schema(fuzzed, "nobody")


owner = schemathesis.pytest.from_fixture("owner_schema")
nobody = schemathesis.pytest.from_fixture("nobody_schema")

HYPOTHESIS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@owner.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract_for_a_user_with_every_grant(case):
    case.call_and_validate(checks=CHECKS, timeout=60)


@nobody.parametrize()
@HYPOTHESIS
def test_every_operation_keeps_its_contract_for_a_user_without_grants(case):
    case.call_and_validate(checks=CHECKS, timeout=60)


def test_the_document_served_is_the_one_in_the_repository(fuzzed):
    import json

    import requests

    served = requests.get(fuzzed["base"] + "/v1/openapi.json", timeout=10)
    assert served.headers["content-type"] == "application/json"
    repository = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.json")
    with open(repository, encoding="utf-8") as f:
        assert served.json() == json.load(f)
