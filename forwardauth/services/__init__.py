"""Services shared by the parts: the audit log, password hashing, and what a
part's CLI commands work with. No aiohttp here: the CLI uses them too."""
