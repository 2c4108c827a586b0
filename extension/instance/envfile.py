"""Read a CairnCMS ``.env`` exactly as CairnCMS itself reads it.

CairnCMS (``api/src/env.ts``) layers built-in defaults < ``process.env`` < the
config file, auto-types every value (``"true"`` becomes a boolean, ``"5"`` a
number, ``"a,b"`` an array, ``{...}`` an object) unless a ``string:``-style
prefix or its type map says otherwise, and reads ``<NAME>_FILE`` for a few
secret-like names.  A sidecar that reads the same file differently would
connect to a different database or bucket than the instance does, so these
rules are reproduced here rather than approximated with plain dotenv.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from ..errors import ConfigError

# api/src/env.ts typeMap: keys forced to one type whatever they look like.
_FORCED_TYPES: dict[str, str] = {
    "HOST": "string",
    "PORT": "string",
    "DB_NAME": "string",
    "DB_USER": "string",
    "DB_PASSWORD": "string",
    "DB_DATABASE": "string",
    "DB_PORT": "number",
    "MAX_BATCH_MUTATION": "number",
    "SERVER_SHUTDOWN_TIMEOUT": "number",
    "FLOWS_RUN_SCRIPT_MAX_MEMORY": "number",
    "FLOWS_RUN_SCRIPT_TIMEOUT": "number",
    "DB_EXCLUDE_TABLES": "array",
    "IMPORT_IP_DENY_LIST": "array",
    "FILE_METADATA_ALLOW_LIST": "array",
    "CACHE_SKIP_ALLOWED": "boolean",
    "GRAPHQL_INTROSPECTION": "boolean",
}

# Names whose value may come from ``<NAME>_FILE`` (api/src/env.ts allow-list,
# reduced to what a migration tool reads).
_FILE_ALLOWED = re.compile(
    r"^(DB_.+|KEY|SECRET|CACHE_.+|EMAIL_.+|STORAGE_.+_(ROOT|KEY|SECRET|BUCKET|REGION|ENDPOINT|"
    r"ACCOUNT_NAME|ACCOUNT_KEY|CONTAINER_NAME|CLOUD_NAME|API_KEY|API_SECRET|KEY_FILENAME|"
    r"PROJECT_ID|CREDENTIALS))$"
)

DEFAULTS: dict[str, Any] = {
    "DB_EXCLUDE_TABLES": ["spatial_ref_sys", "sysdiagrams"],
    "STORAGE_LOCATIONS": "local",
    "STORAGE_LOCAL_DRIVER": "local",
    "STORAGE_LOCAL_ROOT": "./uploads",
    "PUBLIC_URL": "/",
    "EXTENSIONS_PATH": "./extensions",
}

_NUMERIC = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _try_number(text: str) -> Any:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _cast_prefixed(value: str) -> tuple[bool, Any]:
    """Apply an explicit ``string:``/``number:``/``regex:``/``array:``/``json:`` prefix."""
    if ":" not in value:
        return False, None
    prefix, _, rest = value.partition(":")
    if prefix == "string":
        return True, rest
    if prefix == "number":
        return True, _try_number(rest) if _NUMERIC.match(rest) else rest
    if prefix == "regex":
        return True, rest
    if prefix == "array":
        return True, [_auto_type(part.strip()) for part in rest.split(",")]
    if prefix == "json":
        try:
            return True, json.loads(rest)
        except ValueError:
            return True, rest
    return False, None


def _auto_type(value: str) -> Any:
    """CairnCMS's implicit typing for a value with no prefix and no forced type."""
    casted, result = _cast_prefixed(value)
    if casted:
        return result
    if value == "true":
        return True
    if value == "false":
        return False
    if value == "null":
        return None
    # env.ts: numbers are converted only when they don't start with "0", so
    # that ids like "007" keep their zeros.
    if value and not value.startswith("0") and _NUMERIC.match(value):
        return _try_number(value)
    if "," in value:
        return [_auto_type(part) for part in value.split(",")]
    if value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def type_value(name: str, value: str) -> Any:
    """Type one raw value the way CairnCMS would for the variable ``name``."""
    casted, result = _cast_prefixed(value)
    if casted:
        return result
    forced = _FORCED_TYPES.get(name)
    if forced == "string":
        return value
    if forced == "number":
        return _try_number(value) if _NUMERIC.match(value) else value
    if forced == "array":
        return [part.strip() for part in value.split(",") if part.strip()]
    if forced == "boolean":
        return value in ("true", "1")
    return _auto_type(value)


def read_env_file(path: Path) -> dict[str, str]:
    """Read the raw ``KEY=value`` pairs of a dotenv file.

    :raises ConfigError: when the file is missing or unreadable.
    """
    if not path.exists():
        raise ConfigError(
            f"The instance env file {path} does not exist",
            hint="pass --env with the path of the instance's .env file, or set CAIRN_MIGRATE_ENV",
        )
    if not path.is_file():
        raise ConfigError(f"The instance env file {path} is not a file", hint="point --env at the .env file itself")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"The instance env file {path} cannot be read: {exc}",
            hint="check the file's permissions and that it is UTF-8 text",
        ) from exc
    import io

    raw = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: (value if value is not None else "") for key, value in raw.items()}


def load_env(path: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the typed environment an instance configured by ``path`` runs with.

    :param path: the instance's ``.env`` file; ``None`` reads only ``environ``.
    :param environ: the process environment (defaults to :data:`os.environ`).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    # The file's values win over the process environment (api/src/env.ts
    # spreads the file after process.env; the public docs say the opposite).
    raw.update(environ)
    if path is not None:
        raw.update(read_env_file(path))
    for name in list(raw):
        if name.endswith("_FILE") and _FILE_ALLOWED.match(name[: -len("_FILE")]):
            target = name[: -len("_FILE")]
            if target in raw:
                raise ConfigError(
                    f"Both {target} and {name} are set",
                    hint=f"remove one of them; CairnCMS refuses to start with both",
                )
            file_path = Path(raw.pop(name))
            if path is not None and not file_path.is_absolute():
                file_path = path.parent / file_path
            try:
                raw[target] = file_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{name} points at {file_path}, which cannot be read", hint=str(exc)) from exc
    env: dict[str, Any] = dict(DEFAULTS)
    for name, value in raw.items():
        env[name] = type_value(name, value)
    return env


def camel_case(snake: str) -> str:
    """``FORCE_PATH_STYLE`` → ``forcePathStyle``, as the camelcase npm package does."""
    parts = [part for part in snake.lower().split("_") if part]
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:]) if parts else ""


def config_from_env(env: Mapping[str, Any], prefix: str, omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """Collect ``<PREFIX>*`` variables into a camelCased options dict (``getConfigFromEnv``).

    A double underscore nests: ``DB_SSL__REJECT_UNAUTHORIZED`` → ``{"ssl": {"rejectUnauthorized": ...}}``.
    """
    config: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(prefix) or name in omit:
            continue
        key = name[len(prefix) :]
        if "__" in key:
            head, *rest = key.split("__")
            node = config.setdefault(camel_case(head), {})
            if not isinstance(node, dict):
                continue
            for part in rest[:-1]:
                node = node.setdefault(camel_case(part), {})
            node[camel_case(rest[-1])] = value
        else:
            config[camel_case(key)] = value
    return config
