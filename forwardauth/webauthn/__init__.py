"""Passkeys and security keys (WebAuthn): the phishing-resistant level.

The modules here are pure (no aiohttp): the `webauthn:` config section
(settings), the credential record and the store protocol (records, with an
in-memory store in memory), single-use challenges and the options the browser
gets (challenges), and the verification of what the browser sends back, on top
of Yubico's `fido2` library (verify, service). The web pages, the step-up
factor and the CLI are wired in the shape of the parts (issue 10).
"""
