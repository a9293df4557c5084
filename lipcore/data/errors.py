"""The one error a missing dataset raises, with everything needed to fix it in its message."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the data dir says they should be.

    The message names the exact (absolute) directory, the layout expected there and how to get the
    data; `directory` holds the same path for programs.
    """

    def __init__(self, directory: str | Path, layout: str, how_to_get: str) -> None:
        self.directory = Path(directory).absolute()
        message = (
            f"dataset not found in {self.directory}\nexpected layout:\n{layout.rstrip()}\nhow to get it: {how_to_get}"
        )
        super().__init__(message)

    def __str__(self) -> str:  # FileNotFoundError would otherwise prefix an errno
        return str(self.args[0])
