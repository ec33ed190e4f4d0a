"""Running the server: uvloop, worker processes on one port, reload on SIGHUP, TLS.

With several workers each process binds the same port with SO_REUSEPORT and
the kernel spreads connections; the parent only supervises and forwards
signals. The app itself is built by `build` (composition.build_app), a
module-level function, so that it reaches spawned workers by name.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import ssl
import sys
from collections.abc import Callable

from aiohttp import web

from forwardauth.core import logs
from forwardauth.core.config import Config
from forwardauth.core.runtime import Runtime, store_problem
from forwardauth.state.base import StoreUnavailable
from forwardauth.web.app import DECISIONS_BY_PATH
from forwardauth.web.connections import LimitedRunner
from forwardauth.web.context import CTX
from forwardauth.web.decision_endpoints import decisions_first

log = logging.getLogger("forwardauth")

Build = Callable[[Runtime], web.Application]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop


class StartupError(Exception):
    """The server cannot start (state store, port): one line for the log, exit status 1."""


async def _serve(runtime: Runtime, build: Build, reuse_port: bool) -> None:
    cfg = runtime.config.server
    app = build(runtime)
    ctx = app[CTX]
    # Connection limits (keep-alive, head timeout, header sizes, how many): web/connections.py
    runner = LimitedRunner(app, runtime.config.limits, access_log=None, handle_signals=False)
    try:
        await runner.setup()  # opens the state store
    except (OSError, StoreUnavailable) as exc:
        raise StartupError(store_problem(runtime.config, exc)) from None
    assert runner.server is not None
    decisions_first(runner.server, app, app[DECISIONS_BY_PATH])
    ssl_ctx = None
    if cfg.tls_cert and cfg.tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, reuse_port=reuse_port, ssl_context=ssl_ctx,
                       backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: "
                           f"{exc.strerror or exc.__class__.__name__}") from None
    # What exists now (modules, the config, the policy and its index, the key
    # ring) lives as long as the process. Out of the collector's generations,
    # it is not walked again by every full collection: with a large policy
    # those walks were most of the slowest 1% of decisions (p99 16 ms -> 5 ms
    # on requests that miss the memo, bench/bench_decision.py).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, ctx.reload)
    log.info("listening", extra={"fields": {"address": f"{cfg.listen_host}:{cfg.listen_port}", "pid": os.getpid(),
                                            "tls": bool(ssl_ctx)}})
    await stop.wait()
    await runner.cleanup()


def run_worker(config: Config, build: Build, reuse_port: bool) -> int:
    """Serve until stopped. Returns the exit status: 1 when it could not start."""
    logs.setup()
    runtime = Runtime.build(config)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(runtime, build, reuse_port))
    except StartupError as exc:
        log.error("cannot start: %s", exc, extra={"fields": {"problem": str(exc)}})
        return 1
    return 0


def _worker_process(config: Config, build: Build, reuse_port: bool) -> None:
    sys.exit(run_worker(config, build, reuse_port))


def serve(config: Config, workers: int, build: Build) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    Runtime.build(config)  # fail here, in the parent, on a bad key ring
    for line in config.warnings:
        log.warning(line)
    if workers <= 1:
        return run_worker(config, build, reuse_port=False)
    mp = multiprocessing.get_context("spawn")
    procs = [mp.Process(target=_worker_process, args=(config, build, True), daemon=False) for _ in range(workers)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for p in procs:
        p.join()
        code = code or (p.exitcode or 0)
    return code
