"""Passkeys and security keys (WebAuthn): the phishing-resistant level.

The modules here are pure (no aiohttp): the `webauthn:` config section
(settings), single-use challenges and the options the browser gets
(challenges), the verification of what the browser sends back on top of
Yubico's `fido2` library (verify), and the ceremonies end to end with the
state store (service). The credential record and its store are in
`forwardauth.state` (WebAuthnCredential, WebAuthnStore), like every record.
"""
