"""Tiny name → callable registries (methods, samplers), in the spirit of torchdistill's."""

from __future__ import annotations

import difflib
from typing import Callable

from raykd.errors import RaykdError


class Registry:
    """A named table of callables filled with the ``register`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str):
        def add(obj):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            obj.registered_name = name
            return obj
        return add

    def get(self, name: str) -> Callable:
        """The callable registered as ``name``; RaykdError naming the allowed values otherwise."""
        if name not in self._items:
            near = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise RaykdError(f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


METHODS = Registry("method")
SAMPLERS = Registry("sampler")
