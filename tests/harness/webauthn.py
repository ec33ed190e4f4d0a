"""Chromium's virtual authenticators (CDP `WebAuthn` domain) for browser tests.

A virtual authenticator lives in one page's DevTools session: it answers
navigator.credentials.create()/get() like a real passkey or security key,
with real keys and signatures, so the server verifies real answers.

    from harness.browser import chromium
    from harness.webauthn import PASSKEY, SECURITY_KEY, virtual_authenticators

    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        with virtual_authenticators(context, page) as auth:
            passkey = auth.add(PASSKEY)
            page.goto("http://auth.fa.localhost:PORT/...")

Where WebAuthn works (Chromium 156, see /work/notes/webauthn-status.md):
an IP address is never an RP ID (127.0.0.1 pages get "This is an invalid
domain"); http://localhost and http://*.localhost are secure contexts that
Chromium resolves to loopback itself, with the RP ID the host or a parent
under localhost (auth.fa.localhost -> fa.localhost, not localhost). Plain
http on other names (*.test) is not a secure context: no WebAuthn there.
So tests behind nginx use *.localhost names.

What the two presets report: PASSKEY gives UP and UV (UV unless the page asks
userVerification "discouraged"), BE=0 BS=0, counters 1, 2, 3 ...;
SECURITY_KEY gives UP only (create/get asking UV "required" fail with
NotAllowedError), counters 1, 2, 3 ..., and no userHandle in get().
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from typing import Any

# A platform passkey: discoverable, verifies its user (biometric/PIN).
PASSKEY: dict[str, Any] = {
    "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
    "isUserVerified": True, "automaticPresenceSimulation": True,
}
# A roaming security key touched without a PIN: presence only, not discoverable.
SECURITY_KEY: dict[str, Any] = {
    "protocol": "ctap2", "transport": "usb", "hasResidentKey": False, "hasUserVerification": False,
    "automaticPresenceSimulation": True,
}
# A synced passkey (backup eligible and backed up).
SYNCED_PASSKEY: dict[str, Any] = {**PASSKEY, "defaultBackupEligibility": True, "defaultBackupState": True}


class Authenticators:
    """The virtual authenticators of one page (its CDP session)."""

    def __init__(self, context: Any, page: Any):
        self.cdp = context.new_cdp_session(page)
        self.cdp.send("WebAuthn.enable", {"enableUI": False})
        self.ids: list[str] = []

    def add(self, options: dict[str, Any]) -> str:
        """Plug one in; returns its id. Several may be plugged in at once."""
        aid = self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"]
        self.ids.append(aid)
        return aid

    def remove(self, aid: str) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": aid})
        self.ids.remove(aid)

    def credentials(self, aid: str) -> list[dict[str, Any]]:
        """What it holds: credentialId (base64url, as the server sees it), signCount, isResidentCredential,
        rpId, backupEligibility, backupState, userName (the private key is left out)."""
        out = []
        for c in self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": aid})["credentials"]:
            c = {k: v for k, v in c.items() if k != "privateKey"}
            # CDP gives binary as standard base64; WebAuthn JSON and forwardauth use base64url.
            c["credentialId"] = base64.urlsafe_b64encode(base64.b64decode(c["credentialId"])).rstrip(b"=").decode()
            out.append(c)
        return out

    def set_user_verified(self, aid: str, verified: bool) -> None:
        """The next user verification succeeds or fails (a wrong PIN, an unknown finger)."""
        self.cdp.send("WebAuthn.setUserVerified", {"authenticatorId": aid, "isUserVerified": verified})

    def set_presence(self, aid: str, present: bool) -> None:
        """Whether the user touches it (False: the ceremony times out)."""
        self.cdp.send("WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": aid, "enabled": present})

    def close(self) -> None:
        for aid in list(self.ids):
            self.remove(aid)
        self.cdp.send("WebAuthn.disable")
        self.cdp.detach()


@contextlib.contextmanager
def virtual_authenticators(context: Any, page: Any) -> Iterator[Authenticators]:
    auth = Authenticators(context, page)
    try:
        yield auth
    finally:
        with contextlib.suppress(Exception):  # the page may be gone already
            auth.close()


# The browser side of a ceremony, for test pages that do not have forwardauth's
# own script: fetch the options, call WebAuthn, post the answer (the JSON of
# PublicKeyCredential.toJSON()). Returns {status, body} or {status: 0, error}.
CEREMONY_JS = """
async ([optionsUrl, answerUrl, kind, extra]) => {
  const post = (url, body) => fetch(url, {method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const r = await post(optionsUrl, extra || {});
  if (!r.ok) return {status: r.status, body: await r.text()};
  const options = await r.json();
  let credential;
  try {
    credential = kind === 'create'
      ? await navigator.credentials.create({publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options)})
      : await navigator.credentials.get({publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options)});
  } catch (e) {
    return {status: 0, error: e.name};
  }
  const done = await post(answerUrl, {...(extra || {}), credential: credential.toJSON()});
  const text = await done.text();
  let body = text;
  try { body = JSON.parse(text); } catch (e) {}
  return {status: done.status, body};
}
"""


def ceremony(page: Any, options_url: str, answer_url: str, kind: str, extra: dict[str, Any] | None = None) -> dict:
    """Run CEREMONY_JS in `page` (kind "create" or "get")."""
    return page.evaluate(CEREMONY_JS, [options_url, answer_url, kind, extra or {}])
