"""What the test helpers that hold a resource (a server, a proxy, a daemon) share: a
``close()`` that a ``with`` block calls, and fixtures that close everything they made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")


class Closing:
    """A context manager whose exit calls :meth:`close`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def made_by(make: Callable[..., T], close: Callable[[T], None]) -> Iterator[Callable[..., T]]:
    """The body of a factory fixture: yields ``make``, then closes everything it made (in
    the order made) once the test is done. Use as ``yield from made_by(...)``."""
    made: list[T] = []

    def factory(*args: Any, **kwargs: Any) -> T:
        item = make(*args, **kwargs)
        made.append(item)
        return item

    yield factory
    for item in made:
        close(item)
