"""Upstream OpenID Connect sign-in and step-up (authorization code + PKCE)."""
