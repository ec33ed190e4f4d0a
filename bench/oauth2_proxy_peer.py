"""oauth2-proxy as the peer in bench_oauth2_proxy.py: build it, run it, sign users in.

Go is used here and nowhere else in the project: `go install` builds
oauth2-proxy into bench/.cache/bin (git-ignored), once; the module and build
caches are Go's defaults (~/go/pkg/mod, ~/.cache/go-build), so a rebuild in
another worktree takes seconds, not minutes.

oauth2-proxy runs against the test OpenID provider (tests/oidc_provider, via
tests/harness/oidc.py) with the cookie session store, and its session cookies
are real ones: each comes from a sign-in through oauth2-proxy's own flow
(/oauth2/start -> the provider, whose interaction a queued test login finishes
-> /oauth2/callback), driven by an HTTP client that follows the redirects.
"""

from __future__ import annotations

import concurrent.futures
import http.cookiejar
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness.oidc import OidcProvider, ProviderUserAgent, provider_unavailable_reason  # noqa: E402
from harness.procs import Proc, http_status  # noqa: E402

VERSION = "v7.15.6"
MODULE = "github.com/oauth2-proxy/oauth2-proxy/v7"
CACHE = REPO / "bench" / ".cache"
BINARY = CACHE / "bin" / "oauth2-proxy"
STAMP = CACHE / "bin" / "oauth2-proxy.version"  # what `go install` built (the binary says "undefined")
COOKIE_NAME = "_oauth2_proxy"


def ensure_built() -> Path:
    """The oauth2-proxy binary, built with `go install` when missing or of another version."""
    if BINARY.is_file() and STAMP.is_file() and STAMP.read_text().strip() == VERSION:
        return BINARY
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if go is None:
        raise SystemExit(f"oauth2-proxy {VERSION} is not built in {BINARY.parent} and there is no `go` to build it")
    print(f"building oauth2-proxy {VERSION} with `go install` into {BINARY.parent} (once; about 3 minutes on "
          "2 busy cores with an empty Go cache, seconds with a warm one) ...", flush=True)
    t = time.monotonic()
    env = dict(os.environ, GOBIN=str(BINARY.parent), GOFLAGS="-buildvcs=false")
    done = subprocess.run([go, "install", f"{MODULE}@{VERSION}"], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not BINARY.is_file():
        raise SystemExit(f"go install {MODULE}@{VERSION} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    STAMP.write_text(VERSION + "\n")
    print(f"  built in {time.monotonic() - t:.0f} s", flush=True)
    return BINARY


def start_provider(workdir: Path, redirect_uri: str) -> OidcProvider:
    """The test OpenID provider, started as tests/harness/oidc.py starts it."""
    if reason := provider_unavailable_reason():
        raise SystemExit(f"the test OpenID provider cannot run: {reason}")
    return OidcProvider(redirect_uris=[redirect_uri], log_dir=workdir / "oidc", client_id="oauth2-proxy").start()


class OAuth2Proxy:
    """One oauth2-proxy process on 127.0.0.1: OIDC against `op`, cookie sessions, auth_request mode."""

    def __init__(self, workdir: Path, op: OidcProvider, port: int, *, cpu: str | None):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        secret = secrets.token_hex(16)  # 32 characters: AES-256 for the session cookie
        argv = [
            str(ensure_built()),
            f"--http-address=127.0.0.1:{port}",
            "--provider=oidc",
            f"--oidc-issuer-url={op.issuer}",
            f"--client-id={op.client_id}",
            f"--redirect-url={self.base}/oauth2/callback",
            "--scope=openid email profile groups",
            "--code-challenge-method=S256",  # the provider requires PKCE
            "--email-domain=*",
            "--upstream=static://202",  # never used: nginx only asks /oauth2/auth
            "--reverse-proxy",
            "--trusted-proxy-ip=127.0.0.1/32",  # as forwardauth's trusted_proxies: X-Forwarded-* from nginx only
            "--skip-provider-button",
            "--set-xauthrequest",  # identity headers on /oauth2/auth's answer
            "--session-store-type=cookie",
            f"--cookie-name={COOKIE_NAME}",
            "--cookie-secure=false",  # plain HTTP on loopback
            # forwardauth writes no access log; neither does oauth2-proxy here.
            "--request-logging=false",
            "--silence-ping-logging",
        ]
        env = dict(os.environ, OAUTH2_PROXY_CLIENT_SECRET=op.client_secret, OAUTH2_PROXY_COOKIE_SECRET=secret,
                   GOMAXPROCS="1")  # one process, one core's worth of Go, like forwardauth's one worker
        env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}  # no HTTP proxy for discovery
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        self.proc = Proc("oauth2-proxy", argv, workdir / "oauth2-proxy.log", env=env)

    def start(self) -> OAuth2Proxy:
        self.proc.start()
        self.proc.wait_until(lambda: http_status(self.port, "/ping") == 200, what="answering /ping")
        return self

    def stop(self) -> None:
        self.proc.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: D102 - a 3xx is the answer we want to see
        return None


def _get(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, dict[str, str]]:
    try:
        with opener.open(url, timeout=15) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def sign_in(proxy: OAuth2Proxy, op: OidcProvider) -> str:
    """One sign-in through oauth2-proxy's flow; returns the Cookie header value it set.

    A login must be queued at the provider (op.next_login) for its interaction
    to finish without a form. Each call has its own cookie jars, like a new browser.
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         urllib.request.HTTPCookieProcessor(jar))
    status, headers = _get(opener, f"{proxy.base}/oauth2/start?rd=%2F")
    if status != 302 or not headers.get("location", "").startswith(op.issuer):
        raise RuntimeError(f"/oauth2/start answered {status}, location {headers.get('location', '-')[:80]!r}")
    callback = ProviderUserAgent(op).follow(headers["location"])  # the provider's redirects, to our callback
    if not callback.startswith(f"{proxy.base}/oauth2/callback?"):
        raise RuntimeError(f"the provider sent the browser to {urllib.parse.urlsplit(callback).path!r}")
    status, headers = _get(opener, callback)
    if status != 302:
        raise RuntimeError(f"/oauth2/callback answered {status}\n{proxy.proc.log(2000)}")
    parts = sorted((c.name, c.value) for c in jar
                   if c.name == COOKIE_NAME or c.name.startswith(COOKIE_NAME + "_") and c.name[len(COOKIE_NAME) + 1:].isdigit())
    if not parts:
        raise RuntimeError("/oauth2/callback set no session cookie")
    return "; ".join(f"{name}={value}" for name, value in parts)


def sign_in_many(proxy: OAuth2Proxy, op: OidcProvider, users: int, *, parallel: int = 4) -> list[str]:
    """`users` real session cookies, one per user (user00000, user00001, ...; the sign-ins
    run in parallel and take the queued logins in whatever order they reach the provider)."""
    op.clear_logins()
    subs = [f"user{i:05d}" for i in range(users)]
    for s in subs:
        op.next_login(s, email=f"{s}@example.test", name=f"User {s[4:]}", groups=["dev"])
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        cookies = list(pool.map(lambda _: sign_in(proxy, op), subs))
    if len(set(cookies)) != users:
        raise RuntimeError("two sign-ins got the same cookie")
    return cookies
