"""Levels of authentication: a total order declared in config, lowest first.

The level a session holds is always *computed* from what the identity provider
proved (acr, else amr), never taken from what was asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    name: str
    rank: int
    acr: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    local_factor: str | None = None


@dataclass(frozen=True)
class Levels:
    """The ordered levels. Rank 0 is the lowest."""

    items: tuple[Level, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {lv.name: lv for lv in self.items})

    def get(self, name: str) -> Level | None:
        if not isinstance(name, str):  # a YAML list or mapping where a name belongs
            return None
        return self._by_name.get(name)  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> Level:
        lv = self.get(name)
        if lv is None:
            raise KeyError(name)
        return lv

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name  # type: ignore[attr-defined]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.items)

    def at_least(self, held: str | None, required: str) -> bool:
        """True when `held` is `required` or above. Unknown names never satisfy."""
        if held is None:
            return False
        h, r = self.get(held), self.get(required)
        return h is not None and r is not None and h.rank >= r.rank

    def and_above(self, name: str) -> tuple[Level, ...]:
        lv = self[name]
        return self.items[lv.rank :]

    def from_claims(self, acr: str | None, amr: Iterable[str] | None = None) -> Level | None:
        """The highest level the claims prove.

        `acr` wins when it names a configured level. `amr` is consulted only
        when there is no usable acr: providers list the methods used (e.g.
        ["pwd", "otp"]), and the highest level any of whose amr values is
        present is granted.
        """
        if acr:
            for lv in reversed(self.items):
                if acr in lv.acr:
                    return lv
        methods = set(amr or ())
        if methods:
            for lv in reversed(self.items):
                if lv.amr and methods.intersection(lv.amr):
                    return lv
        return None
