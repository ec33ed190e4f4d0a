"""Device approval at scale: 10,000 devices long-polling one worker.

    .venv/bin/python bench/bench_devices.py                  # 10,000 devices, 300 requests
    .venv/bin/python bench/bench_devices.py --devices 2000 --requests 100

What it does:
1. starts the server in a child process (one worker, uvloop, open-files
   limit raised) with `--devices` users, each with one paired device;
2. connects every device (raw HTTP/1.1, one kept connection each), polls
   once without an ETag (200, empty), then polls again with the ETag it got:
   every device now waits;
3. reads the server's RSS (/proc/PID/status VmRSS) while they all wait;
4. creates `--requests` approval requests, one every `--interval`, each for
   a different random user, and times from just before the create call to
   the moment that user's device reads its 200 (the create call's own round
   trip is included, so the figure is an upper bound);
5. prints waiting polls, RSS, p50/p99/max, errors, and as a baseline the
   p50/p99 of a request that does nothing, sent to the same server right
   after each create (what the machine and the event loop cost at that
   moment), the server's GC pauses during the request phase, and the CPU
   and wall time of one full collection with every poll waiting. Targets:
   RSS < 250 MB at 10,000 waiting polls, p99 < 100 ms, no error.

Targets: `--target stub` (the default) is the devices part's own API over its
service on the in-memory store (tests/harness/devices_stub.py) plus bench-only
routes (create a request, count waiting polls, GC figures); `--target serve`
is the real `forwardauth serve` (one worker, SQLite state, the devices written
into its store first), with requests made through its sign-in page
(passwordless: the form, with its CSRF token) and waiting polls counted from
this side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def raise_nofile(want: int) -> int:
    """Raise the soft open-files limit to what is needed (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# --- the server (child process) -------------------------------------------------------

def serve_stub(devices: int, creds_file: Path, poll_timeout: float, gc_threshold2: int | None) -> None:
    raise_nofile(devices + 1000)
    if gc_threshold2 is not None:  # an experiment: full collections rarer (see bench/README.md)
        g0, g1, _ = gc.get_threshold()
        gc.set_threshold(g0, g1, gc_threshold2)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from aiohttp import web

    from forwardauth.devices.settings import DevicesSettings, Limits
    from harness.devices_stub import DeviceStub

    gc_pauses = GcPauses()

    async def main() -> None:
        stub = DeviceStub(DevicesSettings(True, "mfa", poll_timeout=poll_timeout,
                                          limits=Limits(requests_per_user=10**3, requests_per_client=10**6)))
        creds = []
        for i in range(devices):
            device, token = await stub.svc.pair({"code": await stub.pairing_code(f"user{i}"), "name": "d"}, None)
            creds.append([device.user, token])
        stub.audit.events = _Nothing()  # type: ignore[assignment]  # 10,000 audit lines would be kept otherwise
        # Like `forwardauth serve` after start-up: what exists now is never
        # collected again. (Here that includes the in-memory store's 10,000
        # device records, which a SQLite or Redis store would not hold.)
        gc.collect()
        gc.freeze()

        async def ask(request: web.Request) -> web.Response:
            r = await stub.ask(request.query["user"])
            return web.json_response({"id": r.id})

        async def waiting(request: web.Request) -> web.Response:
            return web.json_response({"waiting": len(stub.hub), "gc": gc_pauses.summary()})

        async def gc_reset(request: web.Request) -> web.Response:
            gc_pauses.reset()
            return web.Response()

        async def ping(request: web.Request) -> web.Response:
            return web.Response()

        async def gc_cost(request: web.Request) -> web.Response:
            """One full collection now: its CPU time (what it costs whatever
            else the machine runs) and wall time, and how many objects it walked."""
            cpu, wall = time.thread_time(), time.perf_counter()
            gc.collect()
            return web.json_response({"cpu_ms": round((time.thread_time() - cpu) * 1000, 1),
                                      "wall_ms": round((time.perf_counter() - wall) * 1000, 1),
                                      "tracked_objects": len(gc.get_objects())})

        extra = [web.post("/_bench/ask", ask), web.get("/_bench/waiting", waiting),
                 web.post("/_bench/gc-reset", gc_reset), web.get("/_bench/ping", ping),
                 web.post("/_bench/gc-cost", gc_cost)]
        await stub.start(extra_routes=extra)
        creds_file.write_text(json.dumps({"port": stub.port, "creds": creds}))
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class GcPauses:
    """How long the collector stopped the server, per generation (a full
    collection walks every object of every waiting poll)."""

    def __init__(self) -> None:
        self.reset()
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.collected = {0: 0, 1: 0, 2: 0}  # objects found to be cyclic garbage

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._t0)
            self.collected[info["generation"]] += info["collected"]

    def summary(self) -> dict[str, object]:
        return {f"gen{g}": {"count": len(p), "max_ms": round(max(p, default=0) * 1000, 1),
                            "total_ms": round(sum(p) * 1000, 1), "collected": self.collected[g]}
                for g, p in self.pauses.items()}


class _Nothing(list):
    def append(self, item: object) -> None:
        pass


# --- the devices (this process) ----------------------------------------------------------

class Device(asyncio.Protocol):
    """One device: a kept connection, polls following the ETag. Minimal
    HTTP/1.1 response reading (status, ETag, Content-Length body)."""

    def __init__(self, bench: Bench, user: str, token: str) -> None:
        self.bench, self.user, self.token = bench, user, token
        self.etag: str | None = None
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.waiting_since: float | None = None
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected.set_result(None)

    def poll(self) -> None:
        assert self.transport is not None
        self.waiting_since = time.perf_counter()
        inm = f"If-None-Match: {self.etag}\r\n" if self.etag else ""
        self.transport.write(f"GET /api/v1/device/requests HTTP/1.1\r\nHost: bench\r\n"
                             f"Authorization: Bearer {self.token}\r\n{inm}\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4: head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            self.answered(status, headers.get("etag"), body)

    def answered(self, status: int, etag: str | None, body: bytes) -> None:
        now = time.perf_counter()
        self.waiting_since = None
        if status == 200:
            self.etag = etag
            if json.loads(body)["requests"]:
                self.bench.delivered(self.user, now)
        elif status != 304:
            self.bench.errors.append(f"{self.user}: HTTP {status}")
        self.bench.polls += 1
        self.poll()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.bench.closing:
            self.bench.errors.append(f"{self.user}: connection lost ({exc!r})")


class Bench:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.polls = 0
        self.closing = False
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0

    def delivered(self, user: str, at: float) -> None:
        t0 = self.sent.pop(user, None)
        if t0 is not None:
            self.latencies.append(at - t0)
            if len(self.latencies) == self.expected:
                self.done.set()


class Target:
    """The server under test, as the bench talks to it."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid
        self.base = f"http://127.0.0.1:{port}"
        self.gc: dict[str, object] | None = None  # the stub's GC pauses (None: not known)

    async def waiting(self, http: Any, devices: list[Device]) -> int:
        raise NotImplementedError

    async def prepare(self, http: Any) -> None:
        """Before the requests."""

    async def create(self, http: Any, user: str) -> bool:
        raise NotImplementedError

    async def noop(self, http: Any) -> None:
        raise NotImplementedError

    async def full_gc(self, http: Any) -> dict[str, object] | None:
        return None


class Stub(Target):
    """The part's API on the in-memory store, with the bench-only routes."""

    async def waiting(self, http: Any, devices: list[Device]) -> int:
        async with http.get(f"{self.base}/_bench/waiting") as r:
            body = await r.json()
        self.gc = body["gc"]
        return int(body["waiting"])

    async def prepare(self, http: Any) -> None:
        async with http.post(f"{self.base}/_bench/gc-reset"):
            pass

    async def create(self, http: Any, user: str) -> bool:
        async with http.post(f"{self.base}/_bench/ask", params={"user": user}) as r:
            return bool(r.status == 200)

    async def noop(self, http: Any) -> None:
        async with http.get(f"{self.base}/_bench/ping") as r:
            await r.read()

    async def full_gc(self, http: Any) -> dict[str, object] | None:
        async with http.post(f"{self.base}/_bench/gc-cost") as r:
            got: dict[str, object] = await r.json()
            return got


class Serve(Target):
    """`forwardauth serve`: requests made by its sign-in page (passwordless,
    the form with its CSRF token), waiting polls counted from this side (a
    poll out for a second with no answer)."""

    csrf = ""

    async def waiting(self, http: Any, devices: list[Device]) -> int:
        now = time.perf_counter()
        return sum(1 for d in devices if d.waiting_since is not None and now - d.waiting_since > 1.0)

    async def prepare(self, http: Any) -> None:
        async with http.get(f"{self.base}/oauth2/devices/approve?rd=/") as r:
            html = await r.text()
        self.csrf = html.split('name="csrf" value="')[1].split('"')[0]

    async def create(self, http: Any, user: str) -> bool:
        form = {"csrf": self.csrf, "rd": "/", "level": "mfa", "username": user}
        async with http.post(f"{self.base}/oauth2/devices/approve", data=form, allow_redirects=False) as r:
            return bool(r.status == 303)

    async def noop(self, http: Any) -> None:
        async with http.get(f"{self.base}/healthz") as r:
            await r.read()


async def run(args: argparse.Namespace, target: Target, creds: list[list[str]]) -> dict[str, object]:
    import aiohttp

    loop = asyncio.get_running_loop()
    bench = Bench()
    devices: list[Device] = []
    t0 = time.perf_counter()
    overflows = listen_overflows()
    for i in range(0, len(creds), 200):
        # In batches, each answered before the next: the server's accept queue
        # is finite, and connections it overflows are reset later (real devices
        # reconnect spread out by their jittered backoff, not 10,000 at once).
        batch = [Device(bench, u, t) for u, t in creds[i:i + 200]]
        await asyncio.gather(*(loop.create_connection(lambda d=d: d, "127.0.0.1", target.port) for d in batch))
        for d in batch:
            d.poll()
        devices += batch
        for _ in range(60):  # at most 3 s: a connection reset meanwhile never answers
            if all(d.etag is not None for d in batch):
                break
            await asyncio.sleep(0.05)
        if len(devices) % 2000 == 0:
            print(f"{len(devices)} devices connected in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4), cookie_jar=jar) as http:
        while (n := await target.waiting(http, devices)) < len(devices) and time.perf_counter() - t0 < 180:
            await asyncio.sleep(0.2)
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        rss = rss_mb(target.pid)
        users = random.sample([u for u, _ in creds], k=min(args.requests, len(creds)))
        bench.expected = len(users)
        await target.prepare(http)
        pings: list[float] = []
        for user in users:
            bench.sent[user] = time.perf_counter()
            if not await target.create(http, user):
                bench.errors.append(f"create for {user} refused")
                bench.expected -= 1
            # The baseline: a request that does nothing, to the same server in
            # the same moment (what the machine and the event loop cost).
            t = time.perf_counter()
            await target.noop(http)
            pings.append(time.perf_counter() - t)
            await asyncio.sleep(args.interval)
        try:
            await asyncio.wait_for(bench.done.wait(), 10)
        except TimeoutError:
            bench.errors.append(f"{bench.expected - len(bench.latencies)} requests never reached their device")
        waiting_after = await target.waiting(http, devices)  # (the stub: and its GC pauses of the request phase)
        full_gc = await target.full_gc(http)
    bench.closing = True
    for d in devices:
        if d.transport is not None:
            d.transport.close()
    lat = sorted(x * 1000 for x in bench.latencies)
    out: dict[str, object] = {
        "target": args.target, "devices": len(devices), "waiting": n, "waiting_after": waiting_after,
        "connect_s": round(connect_s, 1), "rss_mb": round(rss, 1), "requests": len(lat),
        "p50_ms": round(statistics.median(lat), 2) if lat else None,
        "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 2) if lat else None,
        "max_ms": round(lat[-1], 2) if lat else None,
        "errors": len(bench.errors), "first_errors": bench.errors[:5],
        "listen_overflows": listen_overflows() - overflows,  # the machine's, during the run (Linux)
        "baseline_noop_p50_ms": round(statistics.median(pings) * 1000, 2) if pings else None,
        "baseline_noop_p99_ms": round(sorted(pings)[max(0, int(len(pings) * 0.99) - 1)] * 1000, 2) if pings else None,
    }
    if target.gc is not None:
        out["server_gc_during_requests"] = target.gc
    if full_gc is not None:
        out["full_gc_at_the_end"] = full_gc
    return out


# --- the real server --------------------------------------------------------------------

def start_serve(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen, int, list[list[str]]]:
    """`forwardauth serve` (one worker, SQLite) with `--devices` users' devices
    written into its store first; (process, port, [[user, credential]])."""
    import yaml

    from forwardauth.devices.credentials import new_credential
    from forwardauth.state.records import Device as DeviceRecord
    from forwardauth.state.sqlite import SQLiteStore

    port = free_port()
    subprocess.run([sys.executable, "-m", "forwardauth", "keys", "generate", "-o", str(workdir / "keys.json")],
                   check=True, capture_output=True)
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
                   "trusted_proxies": ["127.0.0.1/32"]},
        "session": {"cookie_name": "fa", "secure": False},
        "keys": {"file": str(workdir / "keys.json")},
        "state": f"sqlite://{workdir / 'state.db'}",
        "levels": [{"name": "password", "acr": ["p"]}, {"name": "mfa", "acr": ["m"]}],
        "local": {"enabled": False, "audit": str(workdir / "audit.log")},
        "devices": {"level": "mfa", "poll_timeout": f"{args.poll_timeout}s", "request_ttl": "30m",
                    "limits": {"requests_per_user": 1000, "requests_per_client": 100_000}},
        "policy": {"default": "deny", "rules": [{"level": "password"}]},
    }
    (workdir / "forwardauth.yaml").write_text(yaml.safe_dump(config))

    async def devices() -> list[list[str]]:
        store = SQLiteStore(str(workdir / "state.db"))
        await store.open()
        creds = []
        now = time.time() - 60
        for i in range(args.devices):
            c = new_credential()
            await store.add_device(DeviceRecord(c.device_id, f"user{i}", "bench", now, c.secret_hash), 5)
            creds.append([f"user{i}", c.token])
        await store.close()
        return creds

    creds = asyncio.run(devices())
    proc = subprocess.Popen([sys.executable, "-m", "forwardauth", "serve", "-c", str(workdir / "forwardauth.yaml")],
                            stdout=open(workdir / "serve.log", "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    for _ in range(600):
        if http_ok(port, "/readyz"):
            return proc, port, creds
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("forwardauth serve did not become ready: see " + str(workdir / "serve.log"))


def listen_overflows() -> int:
    """The kernel's count of connections dropped from a full accept queue (0 when not on Linux)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    names, values = lines[0].split(), lines[1].split()
    return int(values[names.index("ListenOverflows")]) if "ListenOverflows" in names else 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(port: int, path: str) -> bool:
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path)
        return c.getresponse().status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=300, help="approval requests to time (default %(default)s)")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between requests (default %(default)s)")
    p.add_argument("--poll-timeout", type=float, default=50.0)
    p.add_argument("--target", choices=["stub", "serve"], default="stub",
                   help="stub: the part's API on the in-memory store, with GC figures (default); serve: "
                        "`forwardauth serve` on SQLite, requests through its sign-in page")
    p.add_argument("--gc-threshold2", type=int, help="the server's third GC threshold (default: CPython's, 10): "
                                                      "how many gen1 collections before a full one")
    p.add_argument("--serve-stub", type=Path, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.devices, args.serve_stub, args.poll_timeout, args.gc_threshold2)
        return 0
    have = raise_nofile(args.devices + 1000)
    if have < args.devices + 100:
        print(f"open-files limit {have} is too low for {args.devices} devices", file=sys.stderr)
        return 1
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="bench_devices_"))
    if args.target == "serve":
        serve, port, creds = start_serve(args, workdir)
        try:
            result = asyncio.run(run(args, Serve(port, serve.pid), creds))
        finally:
            serve.terminate()
            serve.wait(30)
    else:
        creds_file = workdir / "creds.json"
        child = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(creds_file), "--devices",
                                  str(args.devices), "--poll-timeout", str(args.poll_timeout)]
                                 + (["--gc-threshold2", str(args.gc_threshold2)] if args.gc_threshold2 else []),
                                 stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                print("the server did not start", file=sys.stderr)
                return 1
            data = json.loads(creds_file.read_text())
            result = asyncio.run(run(args, Stub(data["port"], child.pid), data["creds"]))
        finally:
            child.terminate()
            child.wait(10)
    if result["errors"]:
        print(f"(kept for a look: {workdir}, the server's log in serve.log)", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    ok = (result["errors"] == 0 and result["rss_mb"] < 250 and result["p99_ms"] is not None
          and result["p99_ms"] < 100)  # type: ignore[operator]
    print("targets (RSS < 250 MB, p99 < 100 ms, no error):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
