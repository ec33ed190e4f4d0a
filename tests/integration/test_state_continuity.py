"""What a running process never forgets: the state store losing its data
under it (an SQLite file deleted or replaced, a Redis that comes back
empty) is detected, logged, reported on /readyz (StateStore.problem) until
`forwardauth state ack`, and the revocations the process remembers are
written back (forwardauth.state.revocations, forwardauth.tokens.index).

Issue 14: state.db deleted under a running server was a silent split brain
(`forwardauth session revoke` made a new empty file and printed "revoked"
while the server kept using the deleted one; /readyz stayed 200, nothing
was logged); a Redis restarted empty forgot revocations, undetected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import pytest

from forwardauth.state.base import StoreUnavailable
from forwardauth.state.records import TokenMeta
from forwardauth.state.revocations import Revocations
from forwardauth.state.sqlite import SQLiteStore
from forwardauth.tokens.index import TokenIndex


def _unlink_db(path: str) -> None:
    """What `rm state.db` does: the database file only (its -wal and -shm stay)."""
    os.unlink(path)


async def test_sqlite_file_deleted_under_a_running_store_is_refused_and_reported(tmp_path, caplog):
    db = str(tmp_path / "state.db")
    server = SQLiteStore(db)
    await server.open()
    rev = Revocations()
    await server.revoke("sid-before", time.time() + 3600)
    assert await rev.refresh(server)
    _unlink_db(db)
    with caplog.at_level(logging.ERROR, "forwardauth.state.sqlite"):
        assert not await rev.refresh(server)
        assert not await rev.refresh(server)  # logged once, not at every refresh
    why = (f"sqlite state {db}: the file was deleted while forwardauth ran; nothing is read or written until it "
           "is back (or a new one is made there)")
    assert rev.last_error == why and server.problem() == why
    assert [r.getMessage() for r in caplog.records] == [why]
    with pytest.raises(StoreUnavailable, match="the file was deleted"):
        await server.set_epoch("bob", time.time())  # never written to the deleted file
    assert rev.is_revoked("x", "sid-before", 0.0)  # the snapshot is kept meanwhile
    await server.close()


async def test_a_command_making_a_new_file_meanwhile_is_in_force_and_nothing_is_forgotten(tmp_path, caplog):
    """The issue's split brain: the command's revocation reaches the server (it opens the new
    file), and what the server remembered (a revocation made before) is written back into it."""
    db = str(tmp_path / "state.db")
    server = SQLiteStore(db)
    await server.open()
    rev, index = Revocations(), TokenIndex()
    now = time.time()
    await server.set_epoch("carol", now - 10)
    await server.revoke("sid-before", now + 3600)
    tok = TokenMeta("00000000-0000-4000-8000-000000000001", "svc", "t", "k1", "password", now, now + 3600, "root")
    await server.put_token(tok)
    await server.revoke_token(tok.id, now)
    assert await rev.refresh(server) and await index.refresh(server, 3600.0)
    _unlink_db(db)
    command = SQLiteStore(db)  # `forwardauth session revoke --user bob`
    await command.open()
    await command.set_epoch("bob", now)
    await command.close()
    with caplog.at_level(logging.ERROR):
        assert await rev.refresh(server)
        assert await index.refresh(server, 3600.0)
    assert rev.is_revoked("bob", "any", now - 1)  # the command's revocation is in force
    assert rev.is_revoked("x", "sid-before", now) and rev.is_revoked("carol", "any", now - 20)
    assert index.token(tok.id) is None
    messages = [r.getMessage() for r in caplog.records]
    assert f"sqlite state {db}: the file was replaced while forwardauth ran; opening the new one (what this " \
           "process remembers is written back into it)" in messages
    assert any(m.startswith("the state store holds less than this process saw") and
               "wrote back 1 epochs and 1 revoked ids" in m for m in messages), messages
    # written back into the file: a process started now sees them too
    fresh = SQLiteStore(db)
    snap = await fresh.revocations(time.time())
    assert "sid-before" in snap.revoked and snap.epochs["carol"] == now - 10 and snap.epochs["bob"] == now
    # ... and the loss is recorded for every process, until acknowledged
    await fresh.revocation_version()
    assert fresh.problem().startswith(f"sqlite state {db} lost its data at ")
    assert fresh.problem().endswith("check it, then run `forwardauth state ack`")
    assert await fresh.acknowledge() == "the recorded loss is acknowledged"
    assert await fresh.acknowledge() == "nothing to acknowledge"
    assert await rev.refresh(server) and server.problem() is None
    await fresh.close()
    await server.close()


async def test_a_file_put_back_is_read_again(tmp_path):
    db = str(tmp_path / "state.db")
    server = SQLiteStore(db)
    await server.open()
    await server.revoke("sid-1", time.time() + 60)
    os.rename(db, db + ".moved")
    with pytest.raises(StoreUnavailable):
        await server.revocation_version()
    os.rename(db + ".moved", db)  # the same file: nothing was lost
    assert await server.revocation_version() == 1
    assert server.problem() is None and server.losses == 0
    await server.close()


async def test_a_version_going_backwards_is_written_back(tmp_path):
    """A store that holds less than this process saw, whatever the backend says
    (a backup put back, a Redis failover that lost the newest writes)."""
    from forwardauth.state.memory import MemoryStore

    store = MemoryStore()
    rev = Revocations()
    await store.set_epoch("alice", 100.0)
    await store.revoke("sid-1", time.time() + 60)
    assert await rev.refresh(store)
    older = MemoryStore()  # what the store went back to: knows nothing
    assert await rev.refresh(older) is True
    snap = await older.revocations(time.time())
    assert snap.epochs == {"alice": 100.0} and "sid-1" in snap.revoked
    assert rev.written_back == 2


async def test_a_store_down_and_a_remembered_revocation_is_written_when_it_is_back():
    from forwardauth.state.memory import MemoryStore

    class Down(MemoryStore):
        down = True

        async def revocation_version(self):
            if self.down:
                raise StoreUnavailable("redis unreachable (ConnectionError)")
            return await super().revocation_version()

    store = Down()
    rev = Revocations()
    rev.remember("sid-signed-out", time.time() + 60)
    assert rev.is_revoked("x", "sid-signed-out", 0.0)
    assert not await rev.refresh(store)
    assert rev.is_revoked("x", "sid-signed-out", 0.0) and rev.pending
    store.down = False
    assert await rev.refresh(store)
    assert "sid-signed-out" in (await store.revocations(time.time())).revoked and not rev.pending
    assert rev.is_revoked("x", "sid-signed-out", 0.0)


# --- Redis: the marker ----------------------------------------------------------------------


pytest_redis = pytest.mark.redis


@pytest_redis
async def test_redis_emptied_under_running_processes_is_detected_written_back_and_reported(tmp_path, caplog):
    from forwardauth.state.redis import MARKER, RedisStore
    from harness.redis import RedisServer

    with RedisServer(tmp_path) as server:
        a = RedisStore(server.url, settle=5.0)
        await a.open()
        assert a.untrusted() is not None  # a new store: signed-in requests wait
        assert (await a.acknowledge()) == "the new store is acknowledged: no more waiting"
        assert a.untrusted() is None and a.problem() is None
        rev = Revocations()
        now = time.time()
        await a.revoke("sid-before", now + 3600)
        await a.set_epoch("locked-user", 253402300799.0)
        assert await rev.refresh(a)
        server.stop()
        server.start()  # no persistence: empty
        with caplog.at_level(logging.ERROR):
            for _ in range(20):
                if await rev.refresh(a):
                    break
                await asyncio.sleep(0.1)
        assert rev.last_error is None
        messages = [r.getMessage() for r in caplog.records]
        assert ("redis state: its marker is gone: Redis lost its data (restarted without persistence, flushed, "
                "or another one); writing back what this process remembers") in messages
        snap = await a.revocations(time.time())
        assert "sid-before" in snap.revoked and snap.epochs["locked-user"] == 253402300799.0
        marker = json.loads(await a.r.get(MARKER))
        assert isinstance(marker["lost_at"], float) and marker["new_until"] is None
        assert a.problem().startswith("redis state lost its data at ")
        # a process started now: not on probation (a replica wrote back), but not ready either
        b = RedisStore(server.url, settle=5.0)
        await b.open()
        assert b.untrusted() is None and b.problem() == a.problem()
        assert await b.acknowledge() == "the recorded loss is acknowledged"
        await a.revocation_version()
        assert a.problem() is None
        await b.close()
        await a.close()


@pytest_redis
async def test_a_new_redis_store_makes_a_starting_process_wait_unless_acknowledged(tmp_path):
    """A process that opens a store without a marker cannot tell "new" from "emptied":
    its revocation snapshot is not read (signed-in requests get 503) until the
    settle time passed, a running replica wrote back, or an operator acknowledged."""
    from forwardauth.state.redis import RedisStore
    from harness.redis import RedisServer

    with RedisServer(tmp_path) as server:
        b = RedisStore(server.url, settle=1.0)
        await b.open()
        rev = Revocations()
        assert not await rev.refresh(b)
        assert rev.last_error.startswith("redis state: a new store (it had no marker): signed-in requests wait ")
        assert b.problem() == b.untrusted()
        await asyncio.sleep(1.1)
        assert await rev.refresh(b) and b.problem() is None
        cli = RedisStore(server.url)  # commands never write a marker
        await cli.open()
        await cli.close()
        await b.close()
