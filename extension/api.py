"""One function per operation: the only entry point the shells call.

The CLI (``cli.py``), the ``/migrate/*`` views (``endpoints/``), scheduled
jobs (``hooks/schedule.py``) and the admin module (through HTTP) all parse
their input, call one function here, and render what it returns.  Nothing
below this layer knows which shell it runs under.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .inspection import inspect_instance
from .instance import Instance
from .progress import Progress


def load_instance(env_path: str | Path | None) -> Instance:
    """Read the instance named by ``--env`` / ``CAIRN_MIGRATE_ENV``.

    :raises ConfigError: with a hint when no env file is named or it is invalid.
    """
    if env_path in (None, ""):
        from .errors import ConfigError

        raise ConfigError(
            "No instance given",
            hint="pass --env PATH (the instance's .env file) or set CAIRN_MIGRATE_ENV",
        )
    return Instance.from_env_file(env_path)


def inspect(instance: Instance, *, check_objects: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Describe an instance: identity, platform, tables, storage and whether file bytes exist.

    :param check_objects: check every file row's bytes (slower on remote stores).
    """
    return inspect_instance(instance, check_objects=check_objects, progress=progress)


def inspect_job(ctx: Any) -> dict[str, Any]:
    """Job kind ``inspect``: :func:`inspect` on the sidecar's instance (``ctx.params["env"]``)."""
    instance = load_instance(ctx.params.get("env"))
    return inspect(instance, check_objects=bool(ctx.params.get("check_objects", True)), progress=ctx)
