"""Scratch folders for unpacking bundle archives, swept when their process is gone.

``open_bundle`` removes its extraction on exit, but a killed process (SIGKILL,
OOM, power loss) cannot: every killed import of a large archive used to leave
its whole unpacked bundle in ``TMPDIR``.  Each run therefore unpacks under
``$TMPDIR/cairn-migrate-<pid>-<random>/`` and, before it does, removes every
such folder whose process no longer runs.  So the scratch space in use is
bounded by the runs alive now: one extraction each.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "cairn-migrate-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove the scratch folders of processes that no longer run; returns what was removed."""
    base = Path(base or tempfile.gettempdir())
    removed = []
    for path in base.glob(f"{PREFIX}*"):
        pid_text = path.name[len(PREFIX):].split("-", 1)[0]
        if not path.is_dir() or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the scratch folder %s of a process that is gone", path)
        removed.append(path)
    return removed


@contextmanager
def scratch(base: Path | None = None) -> Iterator[Path]:
    """A scratch folder of this process (stale ones swept first), removed on exit."""
    sweep_stale(base)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
