"""Where the sidecar keeps its own state (jobs, freeze flag, copy ledgers).

Never in the CairnCMS database: an embedded SQLite file by default, any
SQLAlchemy URL by ``CAIRN_MIGRATE_STATE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_state_url(environ: Mapping[str, str] | None = None) -> str:
    """``$CAIRN_MIGRATE_STATE_URL``, else ``sqlite:///<XDG_STATE_HOME or ~/.local/state>/cairn-migrate/state.db``."""
    environ = os.environ if environ is None else environ
    if environ.get("CAIRN_MIGRATE_STATE_URL"):
        return environ["CAIRN_MIGRATE_STATE_URL"]
    base = environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return f"sqlite:///{Path(base) / 'cairn-migrate' / 'state.db'}"
