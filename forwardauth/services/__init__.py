"""Services shared by the parts, written once: the audit log, password
hashing, what a part's CLI commands work with, and `accounts`, the one account
service behind `forwardauth users`, `forwardauth accounts` and the admin API.
Below the parts, above `forwardauth.state`; nothing here imports aiohttp or a
part (the CLI uses them too).
"""
