"""The session-wide stack for tests/security: forwardauth (harness/stack.py's policy
and credentials), the three apps of harness/apps.py, and each proxy from its
shipped config in front of each app: nine proxies, started once, in parallel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.apps import KINDS
from harness.forwardauth import COOKIE
from harness.proxies import PROXIES, MissingTool, require
from harness.shipped import start_shipped
from harness.stack import APP_HOST, Stack, matrix_forwardauth, start_app


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    started: list = []
    with ThreadPoolExecutor(len(KINDS) + 1) as pool:  # the apps start while the CLI mints credentials
        made = pool.submit(matrix_forwardauth, root / "forwardauth")
        apps_started = {kind: pool.submit(start_app, kind, root) for kind in KINDS}
        apps = {}
        try:
            for kind, future in apps_started.items():
                apps[kind] = future.result()
                started.append(apps[kind])
            fa, creds = made.result()
        except BaseException:
            for running in started:
                running.stop()
            raise
    fa.start()
    try:
        s = Stack(fa, apps, creds=creds)
        wanted = []
        for proxy in PROXIES:
            try:
                require(proxy)
            except MissingTool as exc:
                s.missing[proxy] = str(exc)
                continue
            wanted += [(proxy, kind) for kind in KINDS]
        with ThreadPoolExecutor(len(wanted) or 1) as pool:
            futures = {key: pool.submit(start_shipped, key[0], root / f"{key[0]}-{key[1]}", fa.port,
                                        apps[key[1]].port, APP_HOST, COOKIE) for key in wanted}
            errors = []
            for key, future in futures.items():
                try:
                    s.proxies[key] = future.result()
                    started.append(s.proxies[key])
                except Exception as exc:  # noqa: BLE001 - stop the others before failing
                    errors.append(exc)
            if errors:
                raise errors[0]
        yield s
    finally:
        for running in started:
            running.stop()
        fa.stop()
