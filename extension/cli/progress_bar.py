"""A rich progress bar that implements the :class:`~cairn_migrate.progress.Progress` interface.

The CLI hands one to an ``api`` function; counts, bytes and rates show on
stderr only when it is a terminal, so piped ``--json`` output stays clean.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    ProgressColumn,
    Task,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    """Items per second, and bytes per second when bytes are counted."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("")
        rate = f"{task.completed / elapsed:,.0f}/s"
        size = task.fields.get("bytes_raw", 0)
        if size:
            rate += f" {_human(int(size / elapsed))}/s"
        return Text(rate, style="progress.data.speed")


class RichProgress:
    """Progress on stderr; silent when disabled or not a terminal."""

    def __init__(self, description: str, *, enabled: bool = True) -> None:
        self._console = Console(stderr=True)
        self._enabled = enabled and sys.stderr.isatty()
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[bytes]}"),
            _RateColumn(),
            TimeElapsedColumn(),
            console=self._console,
            disable=not self._enabled,
            transient=True,
        )
        self._task: TaskID = self._bar.add_task(description, total=None, bytes="", bytes_raw=0)
        self._bytes = 0

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._bar.stop()

    def progress(
        self,
        items_done: int | None = None,
        items_total: int | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        if bytes_done is not None:
            self._bytes = bytes_done
        self._bar.update(self._task, completed=items_done, total=items_total, bytes=_human(self._bytes), bytes_raw=self._bytes)

    def advance(self, items: int = 0, bytes: int = 0) -> None:
        self._bytes += bytes
        self._bar.update(self._task, advance=items, bytes=_human(self._bytes), bytes_raw=self._bytes)

    def log(self, message: str) -> None:
        if self._enabled:
            self._console.log(message)

    def check_cancelled(self) -> None:
        return None


def _human(size: int) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
