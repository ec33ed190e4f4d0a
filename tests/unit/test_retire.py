"""What a reload leaves behind is emptied off the event loop (web/retire.py)."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer

from forwardauth.composition import build_app, load_config
from forwardauth.core.lru import Lru
from forwardauth.core.runtime import Runtime
from forwardauth.state.memory import MemoryStore
from forwardauth.web import retire as retire_module
from forwardauth.web.context import CTX
from forwardauth.web.retire import empty, retire

from .conftest import BASE
from .test_server import POLICY, cookie, nginx


async def until_empty(*tables, within=5.0):
    deadline = time.monotonic() + within
    while any(tables) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return not any(tables)


async def test_retired_tables_are_emptied_on_another_thread():
    big, small = Lru(50_000), {}
    for i in range(50_000):
        big.put(i, (i, str(i)))
    small.update({i: i for i in range(10)})
    retire([big, small])
    assert await until_empty(big, small)
    assert retire_module._thread is not None and retire_module._thread.name == "forwardauth-retire"
    retire([])  # nothing to empty: the thread goes on with the next hand-over
    later = {i: i for i in range(100)}
    retire([later])
    assert await until_empty(later) and retire_module._thread.is_alive()


def test_empty_stops_when_the_table_is_emptied_by_its_owner():
    class Racing(dict):
        def popitem(self):
            self.clear()
            raise KeyError("popitem(): dictionary is empty")

    t = Racing(a=1, b=2)
    empty(t)
    assert t == {}


async def test_a_reload_hands_the_old_memo_and_caches_to_the_retiring_thread(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + POLICY)
    rt = Runtime.build(load_config(path))
    app = build_app(rt, MemoryStore())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        c.rt = rt
        for i in range(20):
            r = await c.get("/auth/nginx", headers={**nginx(f"https://a.example.com/p/{i}"), **cookie(c)})
            assert r.status == 200
        ctx = app[CTX]
        endpoint = next(e for e in _endpoints(app) if e.endpoint == "nginx")
        old_memo = endpoint.authorizer.memo.tables()
        old_caches = rt.caches()
        assert all(old_memo[:2]) and all(old_caches)
        assert ctx.reload() is True and ctx.runtime is not rt
        r = await c.get("/auth/nginx", headers={**nginx("https://a.example.com/p/0"), **cookie(c)})
        assert r.status == 200  # the new pipeline answers (the cookie's key ring is the same file)
        assert endpoint.authorizer.runtime is ctx.runtime
        assert await until_empty(*old_memo, *old_caches)


def _endpoints(app):
    """The decision endpoints' handlers, as composed (their bound `handle` methods on the routes)."""
    from forwardauth.web.decision_endpoints import DecisionEndpoint

    found = []
    for route in app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(owner, DecisionEndpoint) and owner not in found:
            found.append(owner)
    return found
