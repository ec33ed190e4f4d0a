"""Fuzz targets: the parsers that read what clients, proxies, providers and operators send.

Each `Target` is a name, a Hypothesis strategy of inputs (random text, and
real values mutated: a sealed cookie, a token, a JWT, a config file), the
call, and the exception types its documentation allows. Anything else
raised is a crash. Two runs use this list:

- tests/unit/test_fuzz.py: every target for a few seconds, fixed seed, in the
  normal suite (CI);
- bench/fuzz.py: the long run (1,000,000 inputs by default), printing inputs,
  unique code paths (sampled) and every undocumented exception.

A new parser (devices' and WebAuthn's messages, for instance) is one more
`Target` in TARGETS; both runs pick it up.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0

CONFIG = """\
server:
  listen: 127.0.0.1:4180
  public_url: https://auth.example.com
  trusted_proxies: [127.0.0.1/32, "::1/128"]
  allowed_redirect_domains: [.example.com]
session: {cookie_name: fa, secure: false, lifetime: 1h, idle_timeout: 10m}
keys:
  inline: [{id: k1, secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8}]
state: memory://
limits: {header_timeout: 5s, max_connections: 100}
levels:
  - {name: password, acr: ["urn:acr:pwd"], amr: [pwd]}
  - {name: mfa, acr: ["urn:acr:mfa"], amr: [otp], local_factor: totp}
policy:
  default: deny
  rules:
    - name: public
      hosts: [status.example.com]
      allow: anonymous
    - {hosts: ["*.example.com"], paths: [/admin/, "re:^/v[0-9]+/"], level: mfa, max_age: 15m, groups: [admins]}
    - {hosts: &h [app.example.com], paths: ["/api/**"], methods_levels: {GET: password, POST: mfa}}
    - {hosts: *h, level: password}
oidc: {issuer: "https://idp.example.com", client_id: fa, client_secret: s}
tokens: {default_lifetime: 30d}
"""


@dataclass(frozen=True)
class Target:
    name: str
    strategy: st.SearchStrategy
    call: Callable[[Any], object]
    allowed: tuple[type[BaseException], ...] = ()


# --- inputs -----------------------------------------------------------------------------

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
URLISH = "abcxyzABZ0129/._-~%?#&=;:@!$'()*+,[]\\ \t\x00\x7f\xe9" + "é/" + "%2e%2f%5c"
SPECIAL = st.sampled_from(["", ".", "..", "/", "//", "%", "%2e", "%2E%2e", "%2f", "%5c", "%00", "%c0%ae", "%252e",
                           "\\", ";", ";x", "#", "?", "\x00", "\r\n", "\u202e", "\ufeff", "é", "\U0001f600",
                           "[", "]", "{", "}", ":", "@", "*", "&a", "*a", "!!str", "- ", "'", '"', "\t"])


def mutated(base: str, alphabet: str = "") -> st.SearchStrategy[str]:
    """`base` with a few random edits: a character replaced, inserted or removed, a special
    sequence spliced in, a piece cut or repeated."""
    chars = st.characters() if not alphabet else st.sampled_from(alphabet)
    edit = st.one_of(
        st.tuples(st.just("set"), st.integers(0, max(0, len(base) - 1)), chars),
        st.tuples(st.just("ins"), st.integers(0, len(base)), st.one_of(chars, SPECIAL)),
        st.tuples(st.just("del"), st.integers(0, max(0, len(base) - 1)), st.integers(1, 8)),
        st.tuples(st.just("cut"), st.integers(0, len(base)), st.just("")),
        st.tuples(st.just("dup"), st.integers(0, len(base)), st.integers(1, 40)),
        st.tuples(st.just("deep"), st.integers(0, len(base)), st.integers(1, 3000)),  # nesting: [[[ {"a":{
    )

    def apply(edits: list) -> str:
        s = base
        for op, i, arg in edits:
            i = min(i, len(s))
            if op == "set" and s:
                s = s[:i] + arg + s[i + 1:]
            elif op == "ins":
                s = s[:i] + arg + s[i:]
            elif op == "del":
                s = s[:i] + s[i + arg:]
            elif op == "cut":
                s = s[:i]
            elif op == "dup":
                s = s[:i] + s[i:i + arg] * 2 + s[i + arg:]
            elif op == "deep":
                s = s[:i] + ("[" if arg % 2 else '{"a":') * arg + s[i:]
        return s

    return st.lists(edit, min_size=0, max_size=6).map(apply)


def text_or(base: str, alphabet: str = "") -> st.SearchStrategy[str]:
    """Mostly mutations of a real value, sometimes any text."""
    return st.one_of(mutated(base, alphabet), mutated(base, alphabet), st.text(max_size=200))


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False),
                         st.text(max_size=40))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                  st.dictionaries(st.text(max_size=10), kids,
                                                                                  max_size=4)), max_leaves=12)


# --- what the targets need, built once ------------------------------------------------------


@cache
def runtime():
    from forwardauth.composition import parse_config
    from forwardauth.core.runtime import Runtime

    return Runtime.build(parse_config(CONFIG, "fuzz.yaml"))


@cache
def samples() -> dict[str, str]:
    """Real values to mutate: a sealed cookie, a token, a JWT, an ID token header."""
    from forwardauth.tokens import macaroon
    from forwardauth.tokens.jwt import JwtSigner

    rt = runtime()
    s = rt.codec.new("alice", "password", NOW, email="a@example.com", groups=("admins",))
    tok = macaroon.mint(rt.keyring, "0f07d475-6ec3-4b8c-9c18-dd6a251e5902",
                        ["account=alice", "level=password", "expires=1900000000", "path=/api/"]).serialize()
    jwt = JwtSigner.hs512(b"k" * 64, "https://auth.example.com").sign(
        {"sub": "alice", "level": "password"}, audience="forwardauth", lifetime=600, now=NOW)
    return {"cookie": rt.codec.seal(s), "token": tok, "jwt": jwt}


# --- the calls ------------------------------------------------------------------------------


def open_cookie(value: str) -> object:
    from forwardauth.core.credentials import Credential

    rt = runtime()
    got = rt.codec.open(value, NOW)
    assert isinstance(got, Credential)
    return got


def cookie_header(header: str) -> object:
    from forwardauth.core.cookies import cookie_value

    got = cookie_value(header, "fa")
    assert got is None or isinstance(got, str)
    return got


NGINX_BASE = {"X-Original-URL": "https://app.example.com/api/items?a=1", "X-Original-Method": "GET",
              "X-Forwarded-For": "203.0.113.9, 10.0.0.1", "Accept": "text/html"}
TRAEFIK_BASE = {"X-Forwarded-Method": "POST", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com",
                "X-Forwarded-Uri": "/api/items/1;x?y=%2F", "X-Forwarded-For": "203.0.113.9"}


def headers_strategy(base: dict[str, str]) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({}, optional={k: text_or(v, URLISH) for k, v in base.items()}
                                 | {"X-Original-URI": text_or("/a/b%2Fc?x", URLISH), "Host": text_or("app.example.com")})


def forwarded(convention_name: str) -> Callable[[dict[str, str]], object]:
    from forwardauth.core.request import FORWARDED, NGINX

    convention = NGINX if convention_name == "nginx" else FORWARDED

    def call(headers: dict[str, str]) -> object:
        rt = runtime()
        return convention.parse(convention.values(headers), ipaddress.ip_address("127.0.0.1"), rt.trusted)

    return call


def client_address(args: tuple[str, str]) -> object:
    from forwardauth.core.request import client_of

    return client_of(args[0], args[1], runtime().trusted)


def readings(path: str) -> object:
    from forwardauth.core.paths import path_readings

    got = path_readings(path)
    assert got and all(isinstance(r, str) for r in got)
    return got


def redirect(target: str) -> object:
    from forwardauth.core.redirects import check_redirect

    got = check_redirect(target, "https://auth.example.com", (".example.com",))
    assert got is None or got.startswith(("https://", "http://"))
    return got


def config_text(text: str) -> object:
    from forwardauth.composition import parse_config

    return parse_config(text, "fuzz.yaml")


def yaml_text(text: str) -> object:
    from forwardauth.core import yamlsafe

    return yamlsafe.load(text)


def strict_json(raw: bytes) -> object:
    from forwardauth.core import jsonstrict

    return jsonstrict.loads(raw)


def macaroon_token(token: str) -> object:
    from forwardauth.tokens import macaroon

    m = macaroon.deserialize(token)
    macaroon.verify_signature(runtime().keyring, m)
    return m


def jwt_verify(token: str) -> object:
    from forwardauth.tokens.jwt import JwtSigner

    signer = JwtSigner.hs512(b"k" * 64, "https://auth.example.com")
    return signer.verify(token, audience="forwardauth", now=NOW + 10)


def id_token_header(token: str) -> object:
    from forwardauth.oidc.client import id_token_header as header

    return header(token)


def id_token_claims(claims: dict[str, Any]) -> object:
    from forwardauth.oidc.flow import LoginState, check_claims

    rt = runtime()
    cfg = rt.config.sections["oidc"]
    login = LoginState("st", "n0nce", "v", "https://app.example.com/", "password", 600.0, NOW - 5, None, True)
    return check_claims(claims, cfg, "https://idp.example.com", rt.config.levels, login, NOW)


CLAIMS = st.fixed_dictionaries(
    {}, optional={"iss": st.one_of(st.just("https://idp.example.com"), JSON_SCALARS),
                  "aud": st.one_of(st.just("fa"), st.lists(st.sampled_from(["fa", "x"]), max_size=3), JSON_SCALARS),
                  "azp": st.one_of(st.just("fa"), JSON_SCALARS),
                  "exp": st.one_of(st.just(NOW + 60), JSON_SCALARS), "iat": st.one_of(st.just(NOW), JSON_SCALARS),
                  "nbf": JSON_SCALARS, "nonce": st.one_of(st.just("n0nce"), JSON_SCALARS),
                  "sub": st.one_of(st.just("alice"), st.text(max_size=300), JSON_SCALARS),
                  "auth_time": st.one_of(st.just(NOW - 1), JSON_SCALARS),
                  "acr": st.one_of(st.sampled_from(["urn:acr:pwd", "urn:acr:mfa"]), JSON_SCALARS),
                  "amr": st.one_of(st.lists(st.sampled_from(["pwd", "otp", "x"]), max_size=3), JSON_VALUES),
                  "email": JSON_SCALARS, "name": JSON_SCALARS, "groups": JSON_VALUES})


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()


def jose(base: str) -> st.SearchStrategy[str]:
    """Compact JOSE values: the real one mutated as text, or its header and payload mutated as
    JSON and encoded again (reaches the JSON readers behind the base64)."""
    head, payload, sig = base.split(".")
    import base64

    def dec(seg: str) -> str:
        return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)).decode()

    structured = st.tuples(mutated(dec(head)), mutated(dec(payload))).map(
        lambda hp: f"{_b64(hp[0])}.{_b64(hp[1])}.{sig}")
    return st.one_of(text_or(base, B64URL + "."), structured, structured)


def _example_config() -> str:
    return (REPO / "config.example.yaml").read_text()


def targets() -> list[Target]:
    from forwardauth.core.errors import ConfigError
    from forwardauth.core.jsonstrict import JsonError
    from forwardauth.core.paths import BadRequest
    from forwardauth.core.yamlsafe import YamlRefused
    from forwardauth.oidc.flow import LoginError
    from forwardauth.tokens.jwt import JwtError
    from forwardauth.tokens.macaroon import TokenError
    from harness.fuzz_devices import targets as device_targets
    from harness.fuzz_webauthn import webauthn_targets

    s = samples()
    json_base = json.dumps({"username": "x1", "roles": ["a", "b"], "nested": {"k": [1, 2.5, None, True]}})
    return [
        Target("cookie_open", text_or(s["cookie"], B64URL + ".~%"), open_cookie),
        Target("cookie_header", st.one_of(text_or(f"a=1; fa={s['cookie']}; b=2", B64URL + ";= \t,\""),
                                          st.text(max_size=100)), cookie_header),
        Target("forwarded_nginx", headers_strategy(NGINX_BASE), forwarded("nginx"), (BadRequest,)),
        Target("forwarded_traefik", headers_strategy(TRAEFIK_BASE), forwarded("traefik"), (BadRequest,)),
        Target("client_address", st.tuples(text_or("127.0.0.1", "0123456789.:abcdef[]% "),
                                           text_or("203.0.113.9, 10.0.0.1", "0123456789.:abcdef, []unknown")),
               client_address),
        Target("path_readings", st.one_of(text_or("/api/v1/Items/%2Fx;p=1/./a", URLISH),
                                          st.text(alphabet=URLISH, max_size=60).map(lambda p: "/" + p)),
               readings, (BadRequest,)),
        Target("redirect_check", st.one_of(text_or("https://app.example.com/a?b=c#d", URLISH),
                                           text_or("/after/sign-in?x=1", URLISH)), redirect),
        Target("config_yaml", mutated(CONFIG), config_text, (ConfigError,)),
        Target("config_example", mutated(_example_config()), config_text, (ConfigError,)),
        Target("yaml_safe", st.one_of(mutated(CONFIG), mutated("a: &x [1, *x]\nb: {<<: *x}\n"), st.text(max_size=80)),
               yaml_text, (yaml.YAMLError, YamlRefused)),
        Target("json_strict", st.one_of(mutated(json_base).map(str.encode), st.binary(max_size=100)), strict_json,
               (JsonError,)),
        Target("macaroon", text_or(s["token"], B64URL), macaroon_token, (TokenError,)),
        Target("jwt_verify", jose(s["jwt"]), jwt_verify, (JwtError,)),
        Target("id_token_header", jose(s["jwt"]), id_token_header, (LoginError,)),
        Target("id_token_claims", CLAIMS, id_token_claims, (LoginError,)),
        *webauthn_targets(),
        *device_targets(),
    ]


# --- the long run's fast engine ---------------------------------------------------------------

SPLICES = ["", ".", "..", "/", "//", "%", "%2e", "%2E%2e", "%2f", "%5c", "%00", "%c0%ae", "%252e", "\\", ";",
           "#", "?", "\x00", "\r\n", "\u202e", "\ufeff", "é", "\U0001f600", "[", "]", "{", "}", ":", "@", "*",
           "&a ", "*a", "!!str ", "- ", "'", '"', "\t", "=", ",", " ", "<<: ", "!!binary ", "NaN", "1e999", "-0",
           '"a":1,"a":2', "\\u0000", "\ud800"]


class Mutator:
    """Hypothesis costs a few milliseconds per input, which is hours for a million; the long run
    takes a corpus from each target's Hypothesis strategy and then applies the same kinds of
    edits as `mutated` with a seeded random.Random: tens of thousands of inputs a second."""

    def __init__(self, seed: int) -> None:
        import random

        self.rng = random.Random(seed)

    def text(self, s: str) -> str:
        rng = self.rng
        for _ in range(rng.randint(1, 6)):
            i = rng.randint(0, len(s))
            op = rng.randrange(7)
            if op == 0 and s:
                s = s[:i] + chr(rng.choice((rng.randint(0, 127), rng.randint(0, 0x10FFFF)))) + s[i + 1:]
            elif op == 1:
                s = s[:i] + rng.choice(SPLICES) + s[i:]
            elif op == 2:
                s = s[:i] + s[i + rng.randint(1, 8):]
            elif op == 3 and rng.random() < 0.2:
                s = s[:i]
            elif op == 4:
                n = rng.randint(1, 40)
                s = s[:i] + s[i:i + n] * rng.randint(2, 50) + s[i + n:]
            elif op == 5:
                n = rng.choice((rng.randint(1, 40), rng.randint(900, 3000)))
                s = s[:i] + ("[" if n % 2 else '{"a":') * n + s[i:]
            else:
                j = rng.randint(0, len(s))
                s = s[:i] + s[j:j + rng.randint(1, 20)] + s[i:]  # a piece copied elsewhere
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if rng.random() < 0.5 else s

    def value(self, v: Any) -> Any:
        rng = self.rng
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, bytes):
            return self.text(v.decode("latin-1")).encode("utf-8", "surrogatepass")
        if isinstance(v, tuple):
            if not v:
                return v
            i = rng.randrange(len(v))
            return v[:i] + (self.value(v[i]),) + v[i + 1:]
        if isinstance(v, list):
            return [self.value(x) if rng.random() < 0.3 else x for x in v] + (
                [self.value("x")] if rng.random() < 0.1 else [])
        if isinstance(v, dict):
            out = dict(v)
            if out and rng.random() < 0.8:
                k = rng.choice(list(out))
                if rng.random() < 0.15:
                    del out[k]
                else:
                    out[k] = self.value(out[k])
            else:
                out[self.text("k")] = self.text("v")
            return out
        if isinstance(v, bool) or v is None:
            return rng.choice([True, False, None, 0, "", "true", [], {}])
        if isinstance(v, (int, float)):
            return rng.choice([v, -v, v + 1, 0, 2**63, 1e308, float("inf"), str(v), None])
        return v


def run_one(target: Target, value: Any) -> BaseException | None:
    """Call the target; None, or the undocumented exception it raised."""
    try:
        target.call(value)
    except target.allowed:
        return None
    except Exception as exc:  # noqa: BLE001 - that is what is being looked for
        return exc
    return None


def describe(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def clock() -> float:
    return time.perf_counter()
