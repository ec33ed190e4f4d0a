"""The tokens part. API tokens: macaroons (`macaroon`, `caveats`), who may do
what with them (`rules`) and the service that issues and revokes them
(`service`; records in forwardauth.state), bearer use on the decision
endpoints (`bearer`, `index`, `decisions`), JWTs for the exchange and the
identity assertion (`jwt`), the admin API (`api`), `cli`, and `web`, its
contribution to the app (composition.py declares the part)."""
