"""The admin REST API under /api/v1/ (accounts, roles, tokens, database
credentials), the token exchange and the JWKS. Described by the OpenAPI
document in `openapi.py`, served at /api/v1/openapi.json."""
