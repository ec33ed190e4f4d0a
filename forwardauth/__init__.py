"""forwardauth: a forward-auth sidecar deciding, per route, who gets through
and at which level of authentication."""

__version__ = "0.1.0"
