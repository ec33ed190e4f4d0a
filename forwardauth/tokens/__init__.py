"""API tokens: macaroons (`macaroon`, `caveats`), their records and service
(`store`, `service`, `rules`), bearer use on the decision endpoints
(`bearer`), and JWTs for the exchange and the identity assertion (`jwt`)."""
