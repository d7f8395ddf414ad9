"""Immutable value classes for the AR hot path, without importing dataclasses.

``dataclasses`` imports ``inspect`` (with ``ast``, ``dis``, ``tokenize``) and
builds each class by compiling generated code: about 10 ms of every AR start
for the three classes the entry point needs (Request, Settings, Response).
A Record is what those classes need of a frozen dataclass: fields in order,
defaults, keyword or positional construction, immutability, equality by
value and a readable repr.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable


class Record:
    """A frozen value: subclasses name FIELDS in order, DEFAULTS and FACTORIES for optional ones."""

    FIELDS: tuple[str, ...] = ()
    DEFAULTS: dict[str, Any] = {}
    FACTORIES: dict[str, Callable[[], Any]] = {}  # a fresh default for each instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if len(args) > len(cls.FIELDS):
            raise TypeError(f"{cls.__name__}: {len(args)} positional arguments for "
                            f"{len(cls.FIELDS)} fields")
        values = dict(zip(cls.FIELDS, args))
        for name, value in kwargs.items():
            if name not in cls.FIELDS or name in values:
                raise TypeError(f"{cls.__name__}: unexpected or repeated argument {name!r}")
            values[name] = value
        for name in cls.FIELDS:
            if name in values:
                value = values[name]
            elif name in cls.DEFAULTS:
                value = cls.DEFAULTS[name]
            elif name in cls.FACTORIES:
                value = cls.FACTORIES[name]()
            else:
                raise TypeError(f"{cls.__name__}: missing argument {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable (cannot delete {name!r})")

    def values(self) -> tuple[Any, ...]:
        """Return the field values in FIELDS order."""
        return tuple(getattr(self, name) for name in type(self).FIELDS)

    def replace(self, **changes: Any) -> Any:
        """Return a copy with the given fields changed."""
        return type(self)(**{**dict(zip(type(self).FIELDS, self.values())), **changes})

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.values() == other.values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in
                          zip(type(self).FIELDS, self.values()))
        return f"{type(self).__name__}({inner})"
