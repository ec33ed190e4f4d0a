"""The three test apps: the running servers route every corpus spelling as the
in-process models (harness.apps.route_of) say, so the Hypothesis tests, which
only use the models, are about the same apps the proxy matrix runs."""

from __future__ import annotations

import json
import re

import pytest

from harness.apps import KINDS, route_of
from harness.corpus import CONTROL_PATHS, spellings
from harness.rawhttp import RawClient

VISIBLE = re.compile(r"[\x21-\x7e]*")


@pytest.mark.parametrize("kind", KINDS)
def test_running_app_routes_as_its_model(stack, kind):
    client = RawClient(stack.apps[kind].port)
    targets = [*CONTROL_PATHS, *(t for _, t in spellings())]
    answered, wrong = 0, []
    try:
        for target in targets:
            try:
                reply = client.request(target, "app.test")
            except Exception:  # noqa: BLE001 - the server's HTTP parser refused the request line
                client.close()
                continue
            if reply.status == 200 and reply.body.startswith(b"{"):
                answered += 1
                got = json.loads(reply.body)["route"]
                if got != route_of(kind, target):
                    wrong.append(f"{target!r}: server {got}, model {route_of(kind, target)}")
            elif route_of(kind, target) not in ("refused", "redirect") and VISIBLE.fullmatch(target):
                # (raw control bytes, spaces or non-ASCII in a request line: each server's
                # HTTP parser may refuse those before any routing; the models only route)
                wrong.append(f"{target!r}: server answered {reply.status}, model {route_of(kind, target)}")
    finally:
        client.close()
    assert not wrong, "\n".join(wrong)
    assert answered > 0.8 * len(targets), f"only {answered} of {len(targets)} targets answered"


@pytest.mark.parametrize("target, routes", [
    # (aiohttp, flask, cleaner): the readings issue 9 describes
    ("/admin/x", ("admin", "admin", "admin")),
    ("/admin/..%2fpublic/x", ("admin", "admin", "public")),
    ("/admin/../public/x", ("admin", "admin", "public")),
    ("/public/%2e%2e/admin/x", ("public", "public", "admin")),
    ("/public/x#/../../admin/x", ("public", "public", "admin")),
    ("/public%2fx", ("other", "public", "public")),
    ("/ADMIN/x", ("other", "other", "other")),
])
def test_models_read_paths_as_the_frameworks_do(target, routes):
    assert tuple(route_of(kind, target) for kind in KINDS) == routes
