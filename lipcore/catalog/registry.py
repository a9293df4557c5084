"""One registry of named records, the shape of every registry in the catalog and of the torch-side
ones that register against it (model builders, dataset readers)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Records of one kind by name, in registration order (`sort`: names listed sorted).

    Registering an equal record again is a no-op (a module imported twice); another record under a
    taken name is an error. `entries` is the live mapping (a test may swap in a copy of it).
    """

    def __init__(self, what: str, *, sort: bool = False) -> None:
        self.what, self.sort = what, sort
        self.entries: dict[str, T] = {}

    def add(self, name: str, record: T) -> T:
        old = self.entries.get(name)
        if old is not None and old != record:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self.entries[name] = record
        return record

    def register(self, record: T) -> T:
        """Add `record` under its own `.name`."""
        return self.add(getattr(record, "name"), record)  # noqa: B009  (T has no bound to name it by)

    def get(self, name: str) -> T:
        """The record called `name`; ValueError naming the registered ones otherwise."""
        try:
            return self.entries[name]
        except KeyError:
            raise ValueError(f"{self.what} {name!r} is unknown; expected one of {self.names()}") from None

    def names(self) -> tuple[str, ...]:
        """Every registered name (registration order, or sorted)."""
        return tuple(sorted(self.entries) if self.sort else self.entries)

    def records(self) -> tuple[T, ...]:
        """Every record, in the order of `names()`."""
        return tuple(self.entries[n] for n in self.names())
