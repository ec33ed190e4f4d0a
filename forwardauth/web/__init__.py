"""The aiohttp plumbing, once, for every part: the app and its context, the
/auth/* adapter around core.authorize, /oauth2/start and the factors it asks,
sign-out, the probes and metrics, one page renderer with one CSP, forms and
CSRF, the admin API's plumbing, and serving (workers, SIGHUP, TLS)."""
