"""The sign-in part: password, TOTP step-up and enrolment pages, served under /oauth2/.

`settings` parses the `local:` config section, `flow` decides (purely) what
a browser arriving at /oauth2/start needs next, `service` does the checking
(accounts, regulation, audit), `totp` the codes; the pages are `password`
and `totp_pages` (with `common`), `web` is the part's contribution to the app
and `cli` its `users` commands (composition.py declares the part).
"""
