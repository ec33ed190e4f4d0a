"""The test OpenID provider (panva's oidc-provider, tests/oidc_provider/) as a child process.

    with OidcProvider(redirect_uris=["http://127.0.0.1:8080/oauth2/callback"]) as op:
        op.next_login("alice", ACR_PASSWORD)      # the next interaction signs in alice
        ua = op.user_agent()
        location = ua.follow(authorize_url)       # -> redirect_uri?code=...&state=...

It binds 127.0.0.1 on a port picked here, is ready once its discovery document
answers, and is terminated (then killed) on stop(); it also exits by itself
when this process dies (it watches its stdin). Everything here only talks to
127.0.0.1, with proxies disabled.

When node or tests/oidc_provider/node_modules is missing, start() skips the
test, or fails it under CI=true (CI must run it).
"""

from __future__ import annotations

import html.parser
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PROVIDER_DIR = Path(__file__).resolve().parent.parent / "oidc_provider"
PROVIDER_SCRIPT = PROVIDER_DIR / "provider.mjs"

ACR_PASSWORD = "urn:forwardauth:acr:password"
ACR_MFA = "urn:forwardauth:acr:mfa"
ACR_HARDWARE = "urn:forwardauth:acr:hardware"
ACR_VALUES = (ACR_PASSWORD, ACR_MFA, ACR_HARDWARE)

_DEFAULT = object()


class ProviderError(RuntimeError):
    """The provider did not start, or answered a request with an error page."""


def _opener(jar: http.cookiejar.CookieJar | None = None) -> urllib.request.OpenerDirector:
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: D102 - keep 3xx as the answer
            return None

    handlers: list[Any] = [urllib.request.ProxyHandler({}), _NoRedirect()]
    if jar is not None:
        handlers.append(urllib.request.HTTPCookieProcessor(jar))
    return urllib.request.build_opener(*handlers)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provider_unavailable_reason() -> str | None:
    """Why the provider cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return f"{PROVIDER_DIR}/node_modules is missing (run `npm ci` there, or scripts/install.sh --test)"
    return None


def _skip_or_fail(reason: str) -> None:
    """Skip the test; under CI=true fail it instead (the project's missing-tool rule)."""
    try:
        from .ci import missing_tool
    except ImportError:  # harness imported without its package
        missing_tool = None
    if missing_tool is not None:
        missing_tool(f"test OpenID provider unavailable: {reason}")
    if os.environ.get("CI", "").lower() == "true":
        raise ProviderError(f"test OpenID provider unavailable under CI: {reason}")
    import pytest

    pytest.skip(f"test OpenID provider unavailable: {reason}")


def _list_env(values: Iterable[str]) -> str:
    return json.dumps([str(v) for v in values])


class OidcProvider:
    """panva's oidc-provider on 127.0.0.1 with one confidential client.

    redirect_uris / post_logout_redirect_uris: registered for the client.
    step_up_on_acr_values: True (default) makes a request whose acr_values the
      provider's SSO session does not meet start a new login; False is stock
      oidc-provider (acr_values is a wish; the session answers with its acr).
    id_token_alg: the client's id_token_signed_response_alg (RS256 or ES256).
    extra_clients: more raw client metadata dicts (e.g. a second audience).
    extra_env: more settings for provider.mjs (see its README).
    """

    def __init__(
        self,
        redirect_uris: Sequence[str],
        *,
        post_logout_redirect_uris: Sequence[str] = (),
        client_id: str = "forwardauth",
        client_secret: str | None = None,
        step_up_on_acr_values: bool = True,
        id_token_alg: str = "RS256",
        id_token_ttl: int = 3600,
        extra_clients: Sequence[Mapping[str, Any]] = (),
        extra_env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_dir: str | Path | None = None,
        startup_timeout: float = 60.0,
    ):
        if not redirect_uris:
            raise ValueError("redirect_uris must not be empty")
        self.redirect_uris = list(redirect_uris)
        self.post_logout_redirect_uris = list(post_logout_redirect_uris)
        self.client_id = client_id
        self.client_secret = client_secret or os.urandom(18).hex()
        self.step_up_on_acr_values = step_up_on_acr_values
        self.id_token_alg = id_token_alg
        self.id_token_ttl = id_token_ttl
        self.extra_clients = [dict(c) for c in extra_clients]
        self.extra_env = dict(extra_env or {})
        self.port = port or _free_port()
        self._own_dir = log_dir is None
        self.dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="oidc-provider-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keys_file = self.dir / f"oidc-keys-{self.port}.json"
        self.log_path = self.dir / f"oidc-provider-{self.port}.log"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._discovery: dict | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.issuer + path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({
            "PORT": str(self.port),
            "ISSUER": self.issuer,
            "CLIENT_ID": self.client_id,
            "CLIENT_SECRET": self.client_secret,
            "REDIRECT_URIS": _list_env(self.redirect_uris),
            "POST_LOGOUT_REDIRECT_URIS": _list_env(self.post_logout_redirect_uris),
            "ID_TOKEN_SIGNED_RESPONSE_ALG": self.id_token_alg,
            "ID_TOKEN_TTL": str(self.id_token_ttl),
            "STEP_UP_ON_ACR_VALUES": "1" if self.step_up_on_acr_values else "0",
            "EXTRA_CLIENTS": json.dumps(self.extra_clients),
            "KEYS_FILE": str(self.keys_file),
            "EXIT_ON_STDIN_CLOSE": "1",
            "NODE_ENV": "test",
        })
        env.update(self.extra_env)
        return env

    def start(self) -> OidcProvider:
        reason = provider_unavailable_reason()
        if reason:
            _skip_or_fail(reason)
        if self._proc is not None and self._proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                ["node", str(PROVIDER_SCRIPT)],
                cwd=str(PROVIDER_DIR), env=self.env(),
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                self._fail(f"exited with status {self._proc.returncode} before answering")
            try:
                self._discovery = self._get_json("/.well-known/openid-configuration", timeout=2)
                return
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.05)
        self.stop()
        self._fail(f"did not answer discovery within {self.startup_timeout}s (last error: {last!r})")

    def log(self, tail: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return "(no log)"

    def _fail(self, what: str) -> None:
        text = self.log()
        print(f"--- test OpenID provider output ({self.log_path}) ---\n{text}", file=sys.stderr)
        raise ProviderError(f"test OpenID provider on port {self.port} {what}\n--- output ---\n{text}")

    def stop(self, timeout: float = 5.0) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout)

    def restart(self, *, rotate_keys: bool = False) -> OidcProvider:
        """Stop and start again on the same port (sessions and codes are lost).

        rotate_keys: new signing keys (new kids) instead of the ones kept in keys_file.
        """
        self.stop()
        if rotate_keys:
            self.keys_file.unlink(missing_ok=True)
        return self.start()

    def rotate_keys(self) -> OidcProvider:
        return self.restart(rotate_keys=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            if getattr(self, "_proc", None) is not None:
                self.stop(timeout=1)
        except Exception:  # noqa: BLE001 - a finaliser: the provider may be half started or gone
            pass

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers={"content-type": "application/json"} if data else {})
        try:
            with _opener().open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _get_json(self, path: str, timeout: float = 10) -> Any:
        status, body = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise ValueError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self._request(method, path, body)
        if status != 200:
            raise ProviderError(f"{method} {path}: {status} {data[:500]!r}")
        return json.loads(data)

    @property
    def discovery(self) -> dict:
        if self._discovery is None:
            self._discovery = self._get_json("/.well-known/openid-configuration")
        return self._discovery

    def jwks(self) -> dict:
        """The public JWKS the provider serves."""
        return self._get_json("/jwks")

    def private_jwks(self) -> dict:
        """The signing keys with their private parts (to forge tokens in tests)."""
        return json.loads(self.keys_file.read_text())

    # ------------------------------------------------------------ test control

    def next_login(
        self,
        sub: str,
        acr: str | None = _DEFAULT,  # type: ignore[assignment]
        amr: Sequence[str] | None = None,
        email: str | None = None,
        name: str | None = None,
        groups: Sequence[str] | None = None,
        *,
        auth_time_offset: int | None = None,
        auth_time: int | None = None,
        id_token_omit: Sequence[str] | None = None,
        id_token_set: Mapping[str, Any] | None = None,
        id_token_raw: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> int:
        """Queue a login: the next interaction completes as `sub` without a form.

        acr: the acr achieved (may be lower than asked); None = no acr claim;
          left out = the first requested acr_values value, else password.
        amr: e.g. ["pwd", "otp"]; None = no amr claim.
        email/name/groups: defaults <sub>@example.com, sub, [] (kept per subject).
        auth_time_offset / auth_time: when the user "authenticated" (seconds
          from now, e.g. -600; or an epoch time). Default now.
        id_token_omit / id_token_set: the next ID token for `sub` from the
          token endpoint loses / gets these claims, re-signed with the
          provider's own key (e.g. id_token_omit=["auth_time"]).
        id_token_raw: the next ID token for `sub` is this string, as is (a
          token forged by the test).
        error: the interaction ends with this OAuth error instead (e.g.
          "access_denied"); `sub` is then ignored.
        Returns how many logins are queued.
        """
        entry: dict[str, Any] = {"sub": sub}
        if acr is not _DEFAULT:
            entry["acr"] = acr
        for key, value in (("amr", amr), ("email", email), ("name", name), ("groups", groups),
                           ("auth_time_offset", auth_time_offset), ("auth_time", auth_time),
                           ("id_token_omit", id_token_omit), ("id_token_set", id_token_set), ("id_token_raw", id_token_raw),
                           ("error", error), ("error_description", error_description)):
            if value is not None:
                entry[key] = list(value) if isinstance(value, (list, tuple)) else value
        return self._control("POST", "/__test__/next-login", entry)["queued"]

    def clear_logins(self) -> None:
        """Drop queued logins and pending ID-token rewrites."""
        self._control("DELETE", "/__test__/next-login")

    def queued_logins(self) -> list[dict]:
        return self._control("GET", "/__test__/next-login")["entries"]

    def interactions(self) -> list[dict]:
        """Every interaction shown so far: {uid, at, prompt: {name, reasons, details}, params, auto}."""
        return self._control("GET", "/__test__/interactions")

    def clear_interactions(self) -> None:
        self._control("DELETE", "/__test__/interactions")

    def user_agent(self) -> ProviderUserAgent:
        return ProviderUserAgent(self)


class _FormParser(html.parser.HTMLParser):
    """First <form>'s action/method and inputs; a name=logout value=yes button anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.method = "get"
        self.fields: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.logout_button = False
        self._in_form = False
        self._forms = 0

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "form":
            self._forms += 1
            if self._forms == 1:
                self._in_form = True
                self.action = a.get("action", "")
                self.method = a.get("method", "get").lower()
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and a.get("name") == "logout" and a.get("value") == "yes":
            self.logout_button = True

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


class ProviderUserAgent:
    """A cookie-keeping user agent that walks the provider's pages over plain HTTP.

    follow(url) GETs url and follows redirects and the provider's auto-submitted
    forms (the "another account signed in" logout dance, the sign-out
    confirmation) while they stay on the provider, and returns the first URL
    that leaves it: the client's redirect_uri with code/state (or error), or a
    post_logout_redirect_uri. A login form that no queued next_login() completes
    raises ProviderError. It keeps the provider's SSO session in `self.jar`.
    """

    def __init__(self, provider: OidcProvider):
        self.provider = provider
        self.jar = http.cookiejar.CookieJar()
        self._open = _opener(self.jar).open
        self.history: list[tuple[str, str, int]] = []

    def _origin(self, url: str) -> tuple[str, str]:
        u = urllib.parse.urlsplit(url)
        return u.scheme, u.netloc

    def request(self, method: str, url: str, form: Sequence[tuple[str, str]] | None = None,
                timeout: float = 10) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(list(form)).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/x-www-form-urlencoded")
        try:
            with self._open(req, timeout=timeout) as resp:
                status, headers, body = resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, dict(exc.headers.items()), exc.read()
        self.history.append((method, url, status))
        return status, {k.lower(): v for k, v in headers.items()}, body.decode("utf-8", "replace")

    def follow(self, url: str, *, max_hops: int = 25) -> str:
        provider_origin = self._origin(self.provider.issuer)
        method, form = "GET", None
        for _ in range(max_hops):
            if self._origin(url) != provider_origin:
                return url
            status, headers, body = self.request(method, url, form)
            if 300 <= status < 400 and "location" in headers:
                url = urllib.parse.urljoin(url, headers["location"])
                method, form = "GET", None
                continue
            parser = _FormParser()
            parser.feed(body)
            if status == 200 and "login-form" in parser.ids:
                raise ProviderError(f"the provider shows its login form at {url}: queue a next_login() first")
            if status == 200 and parser.action is not None and parser.method == "post":
                fields = list(parser.fields)
                if parser.logout_button:
                    fields.append(("logout", "yes"))
                url = urllib.parse.urljoin(url, parser.action)
                method, form = "POST", fields
                continue
            raise ProviderError(f"{method} {url} -> {status}: {body[:1500]}")
        raise ProviderError(f"more than {max_hops} hops at the provider, last {url}")


def start_provider(**kwargs: Any) -> OidcProvider:
    """OidcProvider(**kwargs).start(): skips the test (fails under CI=true) without node."""
    return OidcProvider(**kwargs).start()
