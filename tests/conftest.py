"""Shared fixtures: real servers from tests/harness, stopped after use.

Missing tools: outside CI a test that needs nginx/Traefik/Caddy is skipped
with the reason; under CI=true it fails, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from harness.forwardauth import ForwardAuth
from harness.proxies import start_echo_app


def pytest_configure(config):
    """Large configs' kept YAML values (services/configcache.py) go to a directory of this run's,
    never to the home directory of whoever runs the tests (servers and CLI children inherit it)."""
    config._fa_cache_dir = tempfile.mkdtemp(prefix="forwardauth-test-cache-")
    os.environ["FORWARDAUTH_CACHE_DIR"] = config._fa_cache_dir


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_fa_cache_dir", ""), ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failure."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="module")
def echo_app(tmp_path_factory):
    """examples/echo_app.py on a free port: answers with the headers it received."""
    app = start_echo_app(tmp_path_factory.mktemp("echo"))
    yield app
    app.stop()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory):
    """One real redis-server on loopback for the tests that only store things in it
    (the replica tests, which stop and start Redis, run their own)."""
    from harness.redis import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis-shared")) as r:
        yield r


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def any_store(request, tmp_path):
    """Each state store in turn, opened and empty: for tests of what every store must do alike."""
    from forwardauth.state.memory import MemoryStore
    from forwardauth.state.sqlite import SQLiteStore

    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "state.db"))
    else:
        from forwardauth.state.redis import RedisStore

        s = RedisStore(request.getfixturevalue("shared_redis").url)
    await s.open()
    if request.param == "redis":
        await s.r.flushdb()
    yield s
    await s.close()


@pytest.fixture(scope="module")
def forwardauth(tmp_path_factory):
    """A real `forwardauth serve` with the harness policy, 0.5 s revocation refresh
    and a 4 s idle timeout (so a session is re-sealed after 2 s)."""
    fa = ForwardAuth(tmp_path_factory.mktemp("forwardauth"), idle_timeout="4s")
    fa.start()
    yield fa
    fa.stop()
