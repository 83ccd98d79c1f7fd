"""One registry per kind of thing (processes, samplers, grids, parameterizations).

A registry maps a name to an object and, on a miss, raises an error that lists
every valid name, so a typo never ends in a stack trace from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects of one kind (e.g. ``SAMPLERS``, ``GRIDS``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove and return the object named ``name`` (a plugin's tests clean up with it)."""
        self.get(name)
        return self._items.pop(name)

    def get(self, name: str) -> T:
        """Return the object named ``name`` or raise a ValueError listing the valid names."""
        if not isinstance(name, str) or name not in self._items:
            valid = ", ".join(sorted(self._items))
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._items[name]

    def build(self, spec: str | Mapping[str, Any] | None, default: str, instance_of: type | None = None) -> Any:
        """The object ``spec`` names, built: a name, a ``{"name": ..., **options}`` mapping, None (``default``),
        or an instance of ``instance_of`` passed through (configs and Python callers use the same specs)."""
        if instance_of is not None and isinstance(spec, instance_of):
            return spec
        options = {"name": spec} if isinstance(spec, str) else dict(spec or {})
        return self.get(options.pop("name", default))(**options)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
