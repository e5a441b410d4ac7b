"""The one registry shape behind heads, data formats and decoder backends: a member registers itself in its own
module with a decorator; lookups of unknown names fail with the closest name and the full list."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name -> class. ``kind`` names what is registered in messages ("head", "data format", "decoder")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str, attribute: str | None = None) -> Callable[[T], T]:
        """Class decorator: register the class as ``name`` (a second class under one name warns and replaces
        the first) and, with ``attribute``, set that class attribute to the name."""

        def wrap(cls: T) -> T:
            previous = self.get(name)
            if previous is not None and previous is not cls:
                qualified = f"{cls.__module__}.{getattr(cls, '__qualname__', cls)}"
                warnings.warn(
                    f"{self.kind} {name!r} is registered twice; {qualified} replaces it", stacklevel=3
                )
            self[name] = cls
            if attribute is not None:
                setattr(cls, attribute, name)
            return cls

        return wrap

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: the closest one (if any is close) and all of them."""
        close = difflib.get_close_matches(str(name).lower(), self.names(), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered {self.kind}s: {', '.join(self.names())}"
