"""The server's OpenAPI schema fuzzed with schemathesis: no generated request gives a 5xx.

Every operation of ``/openapi.json`` gets a bounded number of generated requests (bodies, path
and query values, valid or not; model names drawn from the served ones and one unknown)
against the session's uvicorn process; each response must pass schemathesis'
``not_a_server_error`` and, for documented statuses, the response schema. (schemathesis' pytest
plugin does not run on pytest 9 — ``request.node._nodeid`` is gone — so the test drives each
operation's Hypothesis strategy itself.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import response_schema_conformance

EXAMPLES_PER_OPERATION = 15
NAMES = st.sampled_from(["ssd", "seg", "static", "no-such-model"])


def test_no_generated_request_gives_a_server_error(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v2/models/{name}/infer",
        "/v1/models/{name}/predict",
    }
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy(), name=NAMES)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case, name):
            if case.path_parameters and "name" in case.path_parameters:
                case.path_parameters["name"] = name  # mostly served models, not random names
            response = case.call_and_validate(
                checks=[schemathesis.checks.not_a_server_error, response_schema_conformance],
                timeout=30,
            )
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        fuzz()
    assert all(codes and max(codes) < 500 for codes in statuses.values())
    assert len(statuses) == len(operations)
    assert 400 in statuses["POST /v2/models/{name}/infer"]
    assert 400 in statuses["POST /v1/models/{name}/predict"]
