"""Shared services: what several parts (and both CLIs) do alike, written once.

Below the parts, above `forwardauth.state`; nothing here imports aiohttp or a
part. `accounts`: the one account service behind `forwardauth users`,
`forwardauth accounts` and the admin API.
"""
