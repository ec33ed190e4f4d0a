"""Local sign-in: password, TOTP step-up and enrolment pages, served under /oauth2/.

`settings` parses the `local:` config section, `flow` decides (purely) what
a browser arriving at /oauth2/start needs next, `service` does the checking
(accounts, regulation, audit), `csrf` protects the forms, `pages` renders
them, and `routes` is the thin aiohttp adapter. `plugin` registers it all.
"""
