"""A rich progress bar that implements the :class:`~cairn_migrate.progress.Progress` interface.

The CLI hands one to an operation; counts, bytes and rates show on stderr, never on stdout, so piped
``--json`` output stays clean.  On a terminal it is rich's live bar.  When stderr is not a terminal (a
log file, CI, a pipe, ``nohup``) a live bar would be noise, and printing nothing left a new operator
watching a 5000-row move for minutes with no sign of life: so, as rclone's ``--stats``, one plain line
at most every ``CAIRN_MIGRATE_PROGRESS_INTERVAL`` seconds (default 10) — phase (the last step the
operation logged), items done/total, bytes, rates, elapsed.  There is no ``--quiet`` to silence it, and it
stays with ``--json``: stderr is not the report.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any


def _live_bar(description: str) -> tuple[Any, Any, Any]:
    """rich's live bar on stderr, its task and console: imported only for a terminal, where it shows (rich is
    ~50 ms of a process's start-up, and a process writing to a pipe or a file never draws a bar)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
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

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[bytes]}"),
                   RateColumn(), TimeElapsedColumn(), console=console, transient=True)
    return bar, bar.add_task(description, total=None, bytes="", bytes_raw=0), console


class RichProgress:
    """Progress on stderr; silent when disabled or not a terminal."""

    def __init__(self, description: str, *, enabled: bool = True) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._description = description
        #: the plain lines for a stderr that is not a terminal (:meth:`_tick`)
        self._plain = not sys.stderr.isatty() and _is_file(sys.stderr)
        self._phase = ""
        self._done: int | None = None
        self._total: int | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._bar, self._task, self._console = _live_bar(description) if self._enabled else (None, None, None)
        self._bytes = 0

    def __enter__(self) -> RichProgress:
        if self._bar is not None:
            self._bar.start()
        self._started = time.monotonic()
        if self._plain:
            self._ticker = threading.Thread(target=self._tick, name="cli-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()

    def _tick(self) -> None:
        """Every interval, one line on stderr once the operation reported anything (a timer, so a phase that
        reports rarely still shows it is alive)."""
        interval = _interval()
        while not self._stop.wait(interval):
            if self._done is None and self._total is None and not self._phase:
                continue
            try:
                sys.stderr.write(self.line() + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed: nothing to report to
                return

    def line(self) -> str:
        """The plain progress line: ``<description>: <phase>: <done>/<total> items, <bytes>, <rates>, <elapsed>``."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        done = self._done or 0
        parts = [f"{done}/{self._total if self._total is not None else '?'} items"]
        if self._bytes:
            parts.append(_human(self._bytes))
        rate = f"{done / elapsed:,.0f} items/s"
        if self._bytes:
            rate += f", {_human(int(self._bytes / elapsed))}/s"
        parts += [rate, f"{elapsed:,.0f} s"]
        return f"{self._description}" + (f": {self._phase}" if self._phase else "") + ": " + ", ".join(parts)

    def progress(
        self,
        items_done: int | None = None,
        items_total: int | None = None,
        bytes_done: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        if bytes_done is not None:
            self._bytes = bytes_done
        if items_done is not None:
            self._done = items_done
        if items_total is not None:
            self._total = items_total
        if self._bar is not None:
            self._bar.update(self._task, completed=items_done, total=items_total, bytes=_human(self._bytes), bytes_raw=self._bytes)

    def advance(self, items: int = 0, bytes: int = 0) -> None:
        self._bytes += bytes
        self._done = (self._done or 0) + items
        if self._bar is not None:
            self._bar.update(self._task, advance=items, bytes=_human(self._bytes), bytes_raw=self._bytes)

    def log(self, message: str) -> None:
        self._phase = message  # the plain line's phase
        if self._console is not None:
            self._console.log(message)

    def check_cancelled(self) -> None:
        return None


def _is_file(stream: object) -> bool:
    """Whether ``stream`` is a real file descriptor (a pipe, a file): an in-process capture (click's test runner, an
    application embedding the CLI) mixes stderr into what it reads as the output, so it gets no plain lines."""
    try:
        return isinstance(stream.fileno(), int)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _interval() -> float:
    """``CAIRN_MIGRATE_PROGRESS_INTERVAL`` seconds between plain lines (default 10; at least 0.05)."""
    raw = os.environ.get("CAIRN_MIGRATE_PROGRESS_INTERVAL", "").strip()
    try:
        return max(0.05, float(raw)) if raw else 10.0
    except ValueError:
        return 10.0


def _human(size: int) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
