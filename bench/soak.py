"""Soak: mixed traffic through real nginx for ten minutes, with the RSS of every worker every 10 s.

    .venv/bin/python bench/soak.py                  # 1 min warm-up, then 10 min measured
    .venv/bin/python bench/soak.py --minutes 2 --warmup 20

forwardauth runs as `forwardauth serve --workers 2` (SQLite state, tokens,
local sign-in, an audit file), behind nginx with the shipped snippets. Two
sources of traffic run at once:

- wrk (2 threads, 32 connections; one run per 10-s window, so each window has
  its own latency distribution), a Lua script mixing, per 20 requests: 10 on
  one path with a session cookie (the hot path, memo hits), 3 on a path never
  asked before (memo misses), 1 denied (403: not in the rule's group), 1
  step-up (401), 1 without credentials (401), 2 with a bearer token, 1 with an
  ambiguous path (400) and 1 with a malformed cookie (401, a logged denial);
- a Python loop through nginx's auth host, about once a second: a sign-in
  (GET the form, POST username + password + CSRF token, then a decision with
  the new cookie), every third one followed by a revocation (the admin API's
  revoke-sessions, then the old cookie must be refused within 3 s), and a
  token issued, used, revoked through the API and refused within 3 s.

Each window prints requests/s, p50 and p99 (wrk), error counts (any answer
but 200/400/401/403, socket errors, a side flow that failed), the side flows
done, the RSS of each worker process (from /proc), and the size of the
server log and audit log. Then per worker: RSS after warm-up, at the end, the
growth (target: under 5 %), and the p99 range.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness.forwardauth import cli  # noqa: E402
from harness.procs import Proc, find_tool, free_port, http_status  # noqa: E402
from harness.tokens import write_config  # noqa: E402

APP, AUTH = "app.test", "auth.test"
PASSWORD = "soak-password-123"

LUA = r"""
local cookie, token, junk = "__COOKIE__", "__TOKEN__", "AAAAbroken.cookie"
local threads = {}
function setup(thread) thread:set("tid", #threads); table.insert(threads, thread) end
function init(args) n = 0; counts = {} end
function request()
  n = n + 1
  local r = n % 20
  local path = "/api/hot"
  local h = {["Host"] = "app.test", ["Accept"] = "application/json", ["Cookie"] = "forwardauth=" .. cookie}
  if r < 10 then
  elseif r < 13 then path = "/api/new/" .. tid .. "/" .. n
  elseif r < 14 then path = "/admin/x"
  elseif r < 15 then path = "/mfa/x"
  elseif r < 16 then h["Cookie"] = nil
  elseif r < 18 then h["Cookie"] = nil; h["Authorization"] = "Bearer " .. token; path = "/api/tok/" .. (n % 50)
  elseif r < 19 then path = "/api/..%2fx" .. (n % 10)
  else h["Cookie"] = "forwardauth=" .. junk end
  return wrk.format("GET", path, h)
end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("STATUS %d %d\n", k, v)) end
end
"""


def nginx_conf(workdir: Path, port: int, auth_port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    upstream forwardauth {{ server 127.0.0.1:{auth_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name {APP};
        root {workdir}/www;
        include {REPO}/nginx/forwardauth.conf;
        location / {{
            include {REPO}/nginx/forwardauth-protect.conf;
            default_type text/plain;
            try_files /ok.txt =404;
        }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {AUTH};
        location / {{
            proxy_pass http://forwardauth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


class Http:
    """Requests through nginx, one new connection each (the side flows are slow on purpose)."""

    def __init__(self, port: int):
        self.port = port

    def __call__(self, method: str, host: str, path: str, headers: dict | None = None,
                 body: str | None = None) -> tuple[int, dict[str, list[str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            r = conn.getresponse()
            hdrs: dict[str, list[str]] = {}
            for k, v in r.getheaders():
                hdrs.setdefault(k.lower(), []).append(v)
            return r.status, hdrs, r.read()
        finally:
            conn.close()


class SideFlows(threading.Thread):
    """Sign-ins, revocations and token issue/revoke, about once a second, checked end to end."""

    def __init__(self, http: Http, admin: str):
        super().__init__(daemon=True)
        self.http, self.admin = http, admin
        self.stop = threading.Event()
        self.done = {"signins": 0, "revocations": 0, "tokens": 0}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def take(self) -> tuple[dict[str, int], list[str]]:
        with self.lock:
            done, errors = dict(self.done), list(self.errors)
            self.done = dict.fromkeys(self.done, 0)
            self.errors = []
        return done, errors

    def _error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def _count(self, what: str) -> None:
        with self.lock:
            self.done[what] += 1

    def decide(self, cookie: str | None = None, token: str | None = None) -> int:
        h = {"Accept": "application/json"}
        if cookie:
            h["Cookie"] = f"forwardauth={cookie}"
        if token:
            h["Authorization"] = f"Bearer {token}"
        return self.http("GET", APP, "/api/side", h)[0]

    def answered_within(self, seconds: float, status: int, **cred: str) -> bool:
        """`status` for these credentials within `seconds` (the other worker learns of a new or
        revoked token or session by its refresh: revocation.refresh_interval, 0.5 s here)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.decide(**cred) == status:
                return True
            time.sleep(0.1)
        return False

    def sign_in(self) -> str | None:
        status, hdrs, body = self.http("GET", AUTH, "/oauth2/sign_in?rd=http%3A%2F%2Fapp.test%2Fapi%2Fside")
        m = re.search(rb'name="csrf" value="([^"]+)"', body)
        nonce = next((c.split(";")[0] for c in hdrs.get("set-cookie", []) if "-csrf=" in c), None)
        if status != 200 or not m or not nonce:
            self._error(f"sign-in page {status}")
            return None
        form = urlencode({"username": "carol", "password": PASSWORD, "csrf": m.group(1).decode(),
                          "rd": "http://app.test/api/side"})
        status, hdrs, _ = self.http("POST", AUTH, "/oauth2/sign_in", {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": nonce}, form)
        cookie = next((c.split(";")[0].split("=", 1)[1] for c in hdrs.get("set-cookie", [])
                       if c.startswith("forwardauth=") and "Max-Age=0" not in c), None)
        if status not in (302, 303) or not cookie:
            self._error(f"sign-in POST {status}")
            return None
        if self.decide(cookie=cookie) != 200:
            self._error("decision after sign-in not 200")
            return None
        self._count("signins")
        return cookie

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        h = {"Authorization": f"Bearer {self.admin}", "Content-Type": "application/json"}
        status, _, data = self.http(method, AUTH, path, h, json.dumps(body) if body is not None else None)
        return status, data

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                cookie = self.sign_in()
                if cookie and n % 3 == 0:
                    status, _ = self.api("POST", "/api/v1/accounts/carol/revoke-sessions")
                    if status != 200 or not self.answered_within(3, 401, cookie=cookie):
                        self._error(f"revoke-sessions {status} / old cookie still allowed")
                    else:
                        self._count("revocations")
                if n % 2 == 0:
                    status, data = self.api("POST", "/api/v1/accounts/bob/tokens", {"name": f"soak-{n}"})
                    tok = json.loads(data) if status == 201 else None
                    if not tok or not self.answered_within(3, 200, token=tok["token"]):
                        self._error(f"token issue {status} / not allowed")
                    else:
                        status, _ = self.api("DELETE", f"/api/v1/tokens/{tok['id']}")
                        if status != 200 or not self.answered_within(3, 401, token=tok["token"]):
                            self._error(f"token revoke {status} / still allowed")
                        else:
                            self._count("tokens")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._error(f"{type(exc).__name__}: {exc}")
            self.stop.wait(1.0)


def workers_of(parent: int) -> list[int]:
    """The worker processes `forwardauth serve --workers N` spawned (multiprocessing children)."""
    out = []
    for tid in os.listdir(f"/proc/{parent}/task"):
        try:
            out += [int(p) for p in Path(f"/proc/{parent}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    workers = []
    for pid in sorted(set(out)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmd:
            workers.append(pid)
    return workers


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert m, text
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[m.group(2)]


def wrk_window(wrk: str, port: int, script: Path, seconds: int) -> dict:
    out = subprocess.run([wrk, "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 60).stdout
    statuses = {int(a): int(b) for a, b in re.findall(r"^STATUS (\d+) (\d+)$", out, re.M)}
    socket_errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        socket_errors = sum(map(int, m.groups()))
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
            "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
            "statuses": statuses, "socket_errors": socket_errors,
            "bad_status": sum(n for s, n in statuses.items() if s not in (200, 400, 401, 403))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="measured time (default 10)")
    ap.add_argument("--warmup", type=int, default=60, help="seconds of traffic before measuring (default 60)")
    ap.add_argument("--window", type=int, default=10, help="seconds per sample (default 10)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    nginx, wrk = find_tool("nginx", "/usr/sbin/nginx"), find_tool("wrk")
    if not nginx or not wrk:
        raise SystemExit("needs nginx and wrk (Debian: apt-get install nginx wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="forwardauth-soak-"))
    fa_port, port = free_port(), free_port()
    config = write_config(workdir, fa_port, f"sqlite:///{workdir / 'state.db'}", extra={
        "local": {"audit": str(workdir / "audit.log"), "scrypt": {"log_n": 12},
                  "regulation": {"max_failures": 1000, "max_client_failures": 1000}},
        "server": {"listen": f"127.0.0.1:{fa_port}", "public_url": f"http://{AUTH}:{port}",
                   "trusted_proxies": ["127.0.0.1/32"], "allowed_redirect_domains": [".test"]}})

    def run_cli(*a: str, stdin: str | None = None) -> str:
        if stdin is None:
            return cli(*a[:2], "-c", str(config), *a[2:])
        return subprocess.run([sys.executable, "-m", "forwardauth", *a[:2], "-c", str(config), *a[2:]], input=stdin,
                              capture_output=True, text=True, check=True).stdout

    run_cli("accounts", "create", "root", "--roles", "admin")
    run_cli("accounts", "create", "bob")
    run_cli("users", "add", "carol", "--password-stdin", stdin=PASSWORD + "\n")
    admin = run_cli("tokens", "issue", "--account", "root", "--name", "admin").strip()
    token = run_cli("tokens", "issue", "--account", "bob", "--name", "wrk").strip()
    cookie = run_cli("session", "issue", "--user", "bob", "--level", "password").strip()
    script = workdir / "mix.lua"
    script.write_text(LUA.replace("__COOKIE__", cookie).replace("__TOKEN__", token))
    for d in ("tmp", "www"):
        (workdir / d).mkdir(exist_ok=True)
    (workdir / "www" / "ok.txt").write_text("ok\n")
    (workdir / "nginx.conf").write_text(nginx_conf(workdir, port, fa_port))
    fa = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", str(config), "--workers",
                              str(args.workers)], workdir / "forwardauth.log").start()
    ngx = None
    side = None
    try:
        fa.wait_until(lambda: http_status(fa_port, "/readyz") == 200, what="ready")
        ngx = Proc("nginx", [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e",
                             str(workdir / "nginx-error.log"), "-g", "daemon off;"],
                   workdir / "nginx-error.log").start()
        ngx.wait_until(lambda: http_status(port, "/api/x", APP) == 401, what="answering")
        workers = workers_of(fa.popen.pid)
        assert len(workers) == args.workers, f"workers: {workers}"
        side = SideFlows(Http(port), admin)
        side.start()
        print(f"forwardauth serve --workers {args.workers} (pids {', '.join(map(str, workers))}), nginx, wrk -t2 "
              f"-c32; warm-up {args.warmup} s, then {args.minutes:g} min in {args.window}-s windows; {workdir}",
              flush=True)
        wrk_window(wrk, port, script, args.warmup)
        side.take()
        head = " ".join(f"{'rss' + str(i) + ' MB':>9}" for i in range(len(workers)))
        print(f"{'t s':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'sign-ins':>8} {'revoked':>7} "
              f"{'tokens':>6} {head} {'log KB':>7} {'audit MB':>8}", flush=True)
        rows = []
        windows = max(1, round(args.minutes * 60 / args.window))
        for i in range(windows):
            w = wrk_window(wrk, port, script, args.window)
            done, side_errors = side.take()
            rss = [rss_mb(p) for p in workers]
            log_kb = (workdir / "forwardauth.log").stat().st_size / 1024
            audit_mb = (workdir / "audit.log").stat().st_size / 2**20 if (workdir / "audit.log").exists() else 0
            errors = w["bad_status"] + w["socket_errors"] + len(side_errors)
            rows.append({**w, "rss": rss, "errors": errors, "side_errors": side_errors})
            print(f"{(i + 1) * args.window:>5} {w['rps']:>7.0f} {w['p50']:>7.2f} {w['p99']:>7.2f} {errors:>6} "
                  f"{done['signins']:>8} {done['revocations']:>7} {done['tokens']:>6} "
                  + " ".join(f"{r:>9.1f}" for r in rss) + f" {log_kb:>7.0f} {audit_mb:>8.1f}", flush=True)
            for e in side_errors[:3]:
                print(f"      side flow: {e}", flush=True)
        side.stop.set()
        statuses: dict[int, int] = {}
        for r in rows:
            for s, n in r["statuses"].items():
                statuses[s] = statuses.get(s, 0) + n
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        print(f"\nrequests {sum(r['requests'] for r in rows)} through nginx ({by_status}); "
              f"errors {sum(r['errors'] for r in rows)}")
        p99 = [r["p99"] for r in rows]
        print(f"p99 per window: median {statistics.median(p99):.2f} ms, min {min(p99):.2f}, max {max(p99):.2f}; "
              f"first half median {statistics.median(p99[:len(p99) // 2] or p99):.2f}, second half "
              f"{statistics.median(p99[len(p99) // 2:]):.2f}")
        worst = 0.0
        for j, pid in enumerate(workers):
            first, last, peak = rows[0]["rss"][j], rows[-1]["rss"][j], max(r["rss"][j] for r in rows)
            growth = (last - first) / first * 100
            worst = max(worst, growth)
            print(f"worker {pid}: RSS {first:.1f} MB after warm-up, {last:.1f} MB at the end ({growth:+.1f} %), "
                  f"peak {peak:.1f} MB")
        ok = worst < 5 and not sum(r["errors"] for r in rows)
        print(f"target (RSS growth < 5 % after warm-up, no error): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        if side is not None:
            side.stop.set()
        if ngx is not None:
            ngx.stop()
        fa.stop()


if __name__ == "__main__":
    sys.exit(main())
