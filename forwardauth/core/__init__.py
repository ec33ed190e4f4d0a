"""The pure core: the decision and everything it needs, from the YAML config
to the proxy's answer. No aiohttp, no asyncio, no state store and no part
here (the import contracts in pyproject.toml hold it to that), so every rule
can be tested and explained without a server."""
