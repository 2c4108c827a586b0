"""The progress interface long work reports through.

Core functions take an optional ``progress`` argument and call only these
methods, so the same code runs under a job (HTTP, scheduler), under the CLI's
progress bar, or silently in a test.  :class:`cairn_migrate.service.jobs.JobContext`
implements it; :class:`NullProgress` is the do-nothing default.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def progress(
        self,
        items_done: int | None = None,
        items_total: int | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None: ...

    def advance(self, items: int = 0, bytes: int = 0) -> None: ...

    def log(self, message: str) -> None: ...

    def check_cancelled(self) -> None: ...


class NullProgress:
    """Accepts every report and ignores it."""

    def progress(
        self,
        items_done: int | None = None,
        items_total: int | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        return None

    def advance(self, items: int = 0, bytes: int = 0) -> None:
        return None

    def log(self, message: str) -> None:
        return None

    def check_cancelled(self) -> None:
        return None
