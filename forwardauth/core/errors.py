"""Errors that carry where they came from, so an operator can find the line."""

from __future__ import annotations

from forwardauth.core.shown import show  # one bounded repr for every message

__all__ = ["ConfigError", "show"]


class ConfigError(Exception):
    """A configuration problem: names the file, the place (rule, field) and the value.

    Several problems are collected and reported together so one `check` run
    shows everything that is wrong.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
