"""Helpers that start real servers for the integration tests and the benchmark.

- procs: free ports, child processes with logs, readiness polling, teardown
- client: an HTTP client that never follows redirects and keeps every header
- forwardauth: the real `forwardauth serve` with a test config, and its CLI
- proxies: nginx, Traefik and Caddy running the shipped configs, and the echo app
- ci: the missing-tool rule (skip locally, fail under CI=true)
- shipped: the example configs (examples/*/nginx.conf whole, Traefik, Caddy) with only addresses changed
- apps: three apps that route paths as aiohttp, Flask/Werkzeug and a Go-style file server do
- corpus: request-target spellings that readers route differently (tests/security)
- rawhttp: a request target sent byte for byte over a kept-alive connection
- stack: forwardauth, the apps and the credentials tests/security share
"""
