"""The admin API driven by its own OpenAPI document (schemathesis from PyPI):
whatever the generated input, no 500, and every answer matches the document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harness.tokens import TokenServer


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    # Device approval on, so that the device API's handlers are driven too (not only its "not enabled" 404).
    fa = TokenServer(tmp_path_factory.mktemp("schemathesis"), extra={"devices": {"level": "mfa", "poll_timeout": "2s"}})
    fa.account("root", roles="admin")
    fa.account("svc", kind="system")
    fa.account("alice", roles="svc")
    fa.admin_token = fa.token("root", "--name", "schemathesis")  # type: ignore[attr-defined]
    with fa:
        yield fa


@pytest.fixture(scope="module")
def api_schema(api_server):
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{api_server.port}/api/v1/openapi.json")


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_every_route_is_in_the_document(api_schema):
    """Every /api/v1 route the app serves, whichever part adds it (but the document itself), is described."""
    from forwardauth.composition import build_app, parse_config
    from forwardauth.core.runtime import Runtime
    from forwardauth.state.memory import MemoryStore

    cfg = parse_config("keys: {inline: [{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}]}\n"
                       "levels: [{name: password}]\nstate: memory://\n", "test.yaml")
    app = build_app(Runtime.build(cfg), MemoryStore())
    served = {f"{r.method} {r.resource.canonical}" for r in app.router.routes()
              if r.resource.canonical.startswith("/api/v1/") and r.method != "HEAD"}
    served.discard("GET /api/v1/openapi.json")
    assert {op.label for op in operations(api_schema)} == served


def test_api_has_no_server_errors(api_server, api_schema):
    """Each operation, with hypothesis-generated input (valid and invalid by the schema).

    (schemathesis' pytest plugin does not load under pytest 9, so the
    operations' strategies are driven with hypothesis directly.)"""
    base = f"http://127.0.0.1:{api_server.port}"
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    calls = 0
    for op in operations(api_schema):

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            nonlocal calls
            headers = {} if case.headers and "Authorization" in case.headers else \
                {"Authorization": f"Bearer {api_server.admin_token}"}
            case.call_and_validate(base_url=base, headers=headers, checks=checks)
            calls += 1

        run()
    assert calls >= 13 * 10
