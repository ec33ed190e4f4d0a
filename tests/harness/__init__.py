"""Helpers that start real servers for the integration tests and the benchmark.

- procs: free ports, child processes with logs, readiness polling, teardown
- client: an HTTP client that never follows redirects and keeps every header
- forwardauth: the real `forwardauth serve` with a test config, and its CLI
- proxies: nginx, Traefik and Caddy running the shipped configs, and the echo app
- ci: the missing-tool rule (skip locally, fail under CI=true)
"""
