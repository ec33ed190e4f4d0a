"""The compose example's forwardauth and nginx, in a real browser, without containers.

examples/compose/forwardauth.yaml and examples/compose/nginx.conf as shipped,
with only what compose provides replaced: the service names (forwardauth,
app) by 127.0.0.1 and free ports, the compose network by 127.0.0.1/32, the
/var/lib/forwardauth volume and /etc/nginx/snippets by local paths, nginx's
port 8080 by a free one. The browser opens http://app.localhost:PORT/admin/,
signs in as the first administrator with the password forwardauth printed,
sets up TOTP and lands on the page, as the compose.yaml comment tells a
person to do.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
import pytest

from harness.browser import screenshot
from harness.ci import missing_tool
from harness.forwardauth import cli
from harness.procs import Proc, free_port, http_status
from harness.proxies import NGINX_SNIPPETS, MissingTool, require, start_echo_app

pytestmark = [pytest.mark.browser, pytest.mark.proxy]

COMPOSE = Path(__file__).resolve().parents[2] / "examples" / "compose"
APP = "app.localhost"


def _replace(text: str, pairs) -> str:  # noqa: ANN001
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    try:
        nginx_bin = require("nginx")
    except MissingTool as exc:
        missing_tool(str(exc))
    work = tmp_path_factory.mktemp("compose-browser")
    echo = start_echo_app(work / "echo")
    port, fa_port = free_port(), free_port()
    data = work / "data"
    data.mkdir()
    cli("keys", "generate", "-o", str(data / "keys.json"))
    config = work / "forwardauth.yaml"
    config.write_text(_replace((COMPOSE / "forwardauth.yaml").read_text(), (
        ("/var/lib/forwardauth", str(data)),
        ("0.0.0.0:4180", f"127.0.0.1:{fa_port}"),
        ("trusted_proxies: [172.30.57.0/24]", "trusted_proxies: [127.0.0.1/32]"),
        ("http://app.localhost:8080", f"http://{APP}:{port}"),
    )))
    fa = Proc("forwardauth", [sys.executable, "-m", "forwardauth", "serve", "-c", config], work / "forwardauth.log")
    fa.start()
    nginx = None
    try:
        fa.wait_until(lambda: http_status(fa_port, "/readyz") == 200, what="ready on /readyz", timeout=60)
        m = re.search(r"username: admin\n    password: (\S+)\n", fa.log())
        assert m, fa.log()
        ngx = work / "nginx"
        ngx.mkdir()
        text = _replace((COMPOSE / "nginx.conf").read_text(), (
            ("server forwardauth:4180", f"server 127.0.0.1:{fa_port}"),
            ("server app:8081", f"server 127.0.0.1:{echo.port}"),
            ("listen 8080 default_server", f"listen 127.0.0.1:{port} default_server"),
            ("listen 8080;", f"listen 127.0.0.1:{port};"),
            ("/etc/nginx/snippets/", f"{NGINX_SNIPPETS}/"),
            ("http {", "http {\n    client_body_temp_path tmp_body;\n    proxy_temp_path tmp_proxy;\n"
                       "    fastcgi_temp_path tmp_fastcgi;\n    uwsgi_temp_path tmp_uwsgi;\n"
                       "    scgi_temp_path tmp_scgi;"),
        ))
        conf = ngx / "nginx.conf"
        conf.write_text(("user root;\n" if os.geteuid() == 0 else "") + text)
        nginx = Proc("nginx", [nginx_bin, "-p", str(ngx), "-c", str(conf), "-e", "stderr", "-g",
                               f"daemon off; pid {ngx}/nginx.pid;"], ngx / "nginx.log")
        nginx.start()
        nginx.wait_until(lambda: http_status(port, "/public/ready", f"{APP}:{port}") == 200, what="serving")
        yield port, fa, nginx, m.group(1)
    finally:
        if nginx is not None:
            nginx.stop()
        fa.stop()
        echo.stop()


def test_first_admin_signs_in_through_the_compose_nginx_and_sets_up_totp(compose_stack):
    from harness.browser import chromium

    port, fa, nginx, admin_password = compose_stack
    target = f"http://{APP}:{port}/admin/report"
    with chromium(hosts=[APP]) as browser:
        page = browser.new_context(viewport={"width": 900, "height": 860}).new_page()
        page.set_default_timeout(20_000)
        try:
            page.goto(target)
            # the sign-in pages are on the app's host (nginx serves /oauth2/ there)
            assert urlsplit(page.url)[:3] == ("http", f"{APP}:{port}", "/oauth2/sign_in"), page.url
            page.fill("#username", "admin")
            page.fill("#password", admin_password)
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.wait_for_url(lambda url: urlsplit(url).path == "/oauth2/step_up")
            page.get_by_role("link", name="Set up an authenticator app").click()
            page.wait_for_url(lambda url: urlsplit(url).path == "/oauth2/totp/enroll")
            secret = page.inner_text("#secret").replace(" ", "")
            page.fill("#code", pyotp.TOTP(secret).at(int(time.time() // 30) * 30))
            with page.expect_navigation():
                page.click("button[type=submit]")
            page.wait_for_url(target)
            body = json.loads(page.inner_text("body"))
            seen = {k.lower(): v for k, v in body["headers"]}
            assert (body["path"], seen["x-auth-request-user"], seen["x-auth-request-level"],
                    seen["x-auth-request-groups"]) == ("/admin/report", "admin", "mfa", "admins")
        except BaseException:
            screenshot(page, "failed-compose")
            print(f"\n--- page was {page.url}\n--- forwardauth log ---\n{fa.log(4000)}\n--- nginx ---\n{nginx.log(2000)}")
            raise
