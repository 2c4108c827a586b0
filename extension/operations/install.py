"""``install-extension``: put the endpoint, the hook and the admin module into an instance.

The JavaScript ships in ``admin_module/`` (readable source, no build step) and
is written as three *local file extensions*, the one layout CairnCMS and
Directus 9/10 both load (their package extensions need differently named
folders and manifest keys; see ``docs/extension.md``)::

    <EXTENSIONS_PATH>/endpoints/cairn-migrate/{index.js, sidecar.js, package.json}
    <EXTENSIONS_PATH>/hooks/cairn-migrate/{index.js, sidecar.js, package.json}
    <EXTENSIONS_PATH>/modules/cairn-migrate/index.js
    <EXTENSIONS_PATH>/.cairn-migrate.json     sidecar URL, shared secret, what was installed

The ``package.json`` beside the API code says ``"type": "commonjs"``, so the
CommonJS files load even when the instance's own ``package.json`` says
``"type": "module"`` (reference §11.28).  Installing again rewrites the files and
keeps the secret; ``uninstall`` removes exactly what the config file lists.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigError
from ..instance.instance import Instance
from ..service.signature import CONFIG_NAME, config_path, read_extension_config

log = logging.getLogger(__name__)

#: The folder name of each local extension.
EXTENSION_NAME = "cairn-migrate"
MODULE_ID = "migrate"
DEFAULT_SIDECAR_URL = "http://127.0.0.1:8765"
#: The app's own module bar when ``directus_settings.module_bar`` is NULL: CairnCMS's
#: ``MODULE_BAR_DEFAULT`` (app/src/constants.ts), where Documentation is a *link*, not a module.
MODULE_BAR_DEFAULT: list[dict[str, Any]] = [
    {"type": "module", "id": "content", "enabled": True},
    {"type": "module", "id": "users", "enabled": True},
    {"type": "module", "id": "files", "enabled": True},
    {"type": "module", "id": "insights", "enabled": True},
    {"type": "link", "id": "docs", "enabled": True, "name": "$t:documentation", "icon": "help",
     "url": "https://cairncms.dev/docs"},
    {"type": "module", "id": "settings", "enabled": True, "locked": True},
]
_OUR_ENTRY = {"type": "module", "id": MODULE_ID, "enabled": True}
_COMMONJS = '{\n  "name": "cairn-migrate-%s",\n  "private": true,\n  "type": "commonjs"\n}\n'

#: installed path (relative to EXTENSIONS_PATH) → source in admin_module/ (or generated text).
def _payload() -> dict[str, str]:
    src = resources.files("cairn_migrate.admin_module")
    sidecar = (src / "api" / "sidecar.js").read_text(encoding="utf-8")
    return {
        f"endpoints/{EXTENSION_NAME}/index.js": (src / "api" / "endpoint.js").read_text(encoding="utf-8"),
        f"endpoints/{EXTENSION_NAME}/sidecar.js": sidecar,
        f"endpoints/{EXTENSION_NAME}/package.json": _COMMONJS % "endpoint",
        f"hooks/{EXTENSION_NAME}/index.js": (src / "api" / "hook.js").read_text(encoding="utf-8"),
        f"hooks/{EXTENSION_NAME}/sidecar.js": sidecar,
        f"hooks/{EXTENSION_NAME}/package.json": _COMMONJS % "hook",
        f"modules/{EXTENSION_NAME}/index.js": (src / "app" / "module.js").read_text(encoding="utf-8"),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)  # it holds the shared secret
    tmp.replace(path)


def loading_problems(instance: Instance) -> list[dict[str, str]]:
    """Settings of the instance that would keep the whole extension from loading (reference §5.2, §11.27)."""
    problems = []
    package_dir = instance.folder / str(instance.env.get("PACKAGE_FILE_LOCATION") or ".")
    if not (package_dir / "package.json").is_file():
        problems.append({
            "setting": "PACKAGE_FILE_LOCATION",
            "message": f"{package_dir / 'package.json'} is missing: the instance then loads no extensions at all",
            "hint": f"create it, e.g. echo '{{\"name\": \"instance\", \"private\": true}}' > {package_dir / 'package.json'}"
                    " (the instance must also start from that folder)",
        })
    return problems


def loading_warnings(instance: Instance) -> list[dict[str, str]]:
    """Settings that hide only the admin module: the endpoint and the hook still load, so not a failure."""
    if str(instance.env.get("SERVE_APP", True)).lower() != "false":
        return []
    return [{
        "setting": "SERVE_APP",
        "message": "SERVE_APP is false: app extensions, the admin module included, are not loaded",
        "hint": "set SERVE_APP=true to use the admin module (the endpoint and hook work without it)",
    }]


def _settings_module_bar(engine: sa.Engine) -> tuple[bool, list[dict[str, Any]] | None]:
    """``(row exists, module_bar)`` of the settings singleton."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT id, module_bar FROM directus_settings ORDER BY id LIMIT 1")).first()
    if row is None:
        return False, None
    value = row.module_bar
    if isinstance(value, (str, bytes)):
        value = json.loads(value) if value else None
    return True, value


def _store_module_bar(engine: sa.Engine, exists: bool, module_bar: list[dict[str, Any]] | None) -> None:
    value = None if module_bar is None else json.dumps(module_bar)
    with engine.begin() as conn:
        if exists:
            first = conn.execute(sa.text("SELECT MIN(id) FROM directus_settings")).scalar()
            conn.execute(sa.text("UPDATE directus_settings SET module_bar = :v WHERE id = :id"), {"v": value, "id": first})
        else:
            # A fresh install has no settings row (reference §11.26): the first write inserts it.
            conn.execute(sa.text("INSERT INTO directus_settings (module_bar) VALUES (:v)"), {"v": value})


def _is_ours(part: dict[str, Any]) -> bool:
    return part.get("type") == "module" and part.get("id") == MODULE_ID


def _add_to_module_bar(engine: sa.Engine) -> str:
    """Show our module: append (or enable) our entry; every other entry stays exactly as it was.

    A NULL module bar means CairnCMS's default, so it is written out as that default plus our entry.
    """
    exists, module_bar = _settings_module_bar(engine)
    before = "missing-row" if not exists else ("null" if module_bar is None else "list")
    current = [dict(part) for part in (MODULE_BAR_DEFAULT if module_bar is None else module_bar)]
    ours = next((part for part in current if _is_ours(part)), None)
    if ours is not None and ours.get("enabled") is True:
        return "present"
    if ours is None:
        current.append(dict(_OUR_ENTRY))
    else:
        ours["enabled"] = True
    _store_module_bar(engine, exists, current)
    return before


def _remove_from_module_bar(engine: sa.Engine, before: str | None) -> bool:
    exists, module_bar = _settings_module_bar(engine)
    if not exists or module_bar is None:
        return False
    kept = [p for p in module_bar if not _is_ours(p)]
    if len(kept) == len(module_bar):
        return False
    # We wrote the default list out only to add ourselves: put NULL back if nobody changed it since.
    _store_module_bar(engine, True, None if before in ("null", "missing-row") and kept == MODULE_BAR_DEFAULT else kept)
    return True


def _engine(instance: Instance) -> sa.Engine:
    from ..instance.database import open_engine

    return open_engine(instance)


def install(instance: Instance, sidecar_url: str | None = None, *, module_bar: bool = True) -> dict[str, Any]:
    """Write (or rewrite) the extension into the instance and show the module in its module bar.

    :param sidecar_url: where the instance reaches the sidecar; default: the one already
        configured, else :data:`DEFAULT_SIDECAR_URL`.
    :param module_bar: add the module to ``directus_settings.module_bar``.
    :returns: ``{extensions_path, sidecar_url, files, written, module_bar, problems, warnings, restart_needed}``;
        ``problems`` keep the extension from loading, ``warnings`` only hide the admin module.
    :raises ConfigError: ``EXTENSIONS_PATH`` cannot be written.
    """
    root = instance.extensions_path
    previous = read_extension_config(instance) or {}
    url = (sidecar_url or previous.get("sidecar_url") or DEFAULT_SIDECAR_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--sidecar-url must be an http(s) URL, not {url!r}")
    written = []
    try:
        for rel, text in _payload().items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                written.append(rel)
        config = {
            "sidecar_url": url,
            "secret": previous.get("secret") or secrets.token_hex(32),
            "module_id": MODULE_ID,
            "files": sorted(_payload()),
            "module_bar_before": previous.get("module_bar_before"),
        }
        bar = "skipped"
        if module_bar:
            bar = _add_to_module_bar(_engine(instance))
            if bar != "present":
                config["module_bar_before"] = bar
        if config != previous:
            written.append(CONFIG_NAME)
        _write_json(config_path(instance), config)
    except OSError as exc:
        raise ConfigError(f"Cannot write the extension into {root}: {exc.strerror or exc}",
                          hint="check EXTENSIONS_PATH in the instance's .env and its permissions") from exc
    return {
        "extensions_path": str(root),
        "sidecar_url": url,
        "files": config["files"] + [CONFIG_NAME],
        "written": written,
        "module_bar": "added" if bar not in ("present", "skipped") else bar,
        "problems": loading_problems(instance),
        "warnings": loading_warnings(instance),
        "restart_needed": bool(written),
    }


def uninstall(instance: Instance, *, module_bar: bool = True) -> dict[str, Any]:
    """Remove exactly what :func:`install` wrote (the files its config lists, our module-bar entry)."""
    root = instance.extensions_path
    config = read_extension_config(instance)
    if config is None:
        return {"extensions_path": str(root), "removed": [], "module_bar": "unchanged", "restart_needed": False}
    removed = []
    for rel in config.get("files") or []:
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:  # never outside EXTENSIONS_PATH, whatever the file says
            continue
        if path.is_file():
            path.unlink()
            removed.append(rel)
        folder = path.parent
        if folder != root.resolve() and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    bar = "unchanged"
    if module_bar and _remove_from_module_bar(_engine(instance), config.get("module_bar_before")):
        bar = "removed"
    config_path(instance).unlink()
    removed.append(CONFIG_NAME)
    return {"extensions_path": str(root), "removed": removed, "module_bar": bar, "restart_needed": True}
