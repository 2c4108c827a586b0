"""Scratch folders for unpacking and staging bundles, swept when their process is gone.

``open_bundle`` removes its extraction on exit, but a killed process (SIGKILL,
OOM, power loss) cannot: every killed import of a large archive used to leave
its whole unpacked bundle in ``TMPDIR``.  Each run therefore works in
``$TMPDIR/cairn-migrate-scratch-<uid>/<pid>-<start>-<random>/`` and, before it
does, removes every folder there whose process no longer runs.  So the
scratch space in use is bounded by the runs alive now: one folder each.

Only that parent folder is swept: it is made by this tool (mode 0700, owned
by the user), so nothing a user puts in ``TMPDIR`` is ever touched.  A folder
names its process by pid *and* start time (Linux ``/proc``), so a pid reused
by another process does not keep a dead run's folder forever.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

PARENT = f"cairn-migrate-scratch-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22); ``"0"`` where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return text.rsplit(")", 1)[-1].split()[19]  # fields after "(comm)" start at field 3


def _owner_alive(name: str) -> bool:
    """Does the process that made the scratch folder ``name`` (``<pid>-<start>-…``) still run?"""
    pid_text, _, rest = name.partition("-")
    started = rest.split("-", 1)[0]
    if not pid_text.isdigit() or not _alive(int(pid_text)):
        return False
    return started in ("", "0") or _start_time(int(pid_text)) in (started, "0")


def root(base: Path | None = None) -> Path:
    """The tool's own scratch parent under ``base`` (default ``TMPDIR``), made private on first use.

    :raises ConfigError: it exists but is not a folder of this user (someone
        else made it: sweeping or writing there would not be safe).
    """
    path = Path(base or tempfile.gettempdir()) / PARENT
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise ConfigError(f"the scratch folder {path} is not a folder of this user",
                          hint="remove it, or point TMPDIR at a folder of your own")
    return path


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove the scratch folders of processes that no longer run; returns what was removed."""
    removed = []
    for path in root(base).iterdir():
        if not path.is_dir() or path.is_symlink() or _owner_alive(path.name):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the scratch folder %s of a process that is gone", path)
        removed.append(path)
    return removed


@contextmanager
def scratch(base: Path | None = None) -> Iterator[Path]:
    """A scratch folder of this process (stale ones swept first), removed on exit."""
    sweep_stale(base)
    pid = os.getpid()
    path = Path(tempfile.mkdtemp(prefix=f"{pid}-{_start_time(pid)}-", dir=root(base)))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
