"""The :class:`Instance` value: one CairnCMS instance as its own ``.env`` describes it.

Every command acts on one instance.  Parsing happens once, here, so that the
database layer, the storage layer and the service all agree on what
``DB_CLIENT``, ``STORAGE_LOCATIONS`` and friends mean.  Relative paths
(``DB_FILENAME``, ``STORAGE_*_ROOT`` of local locations, ``EXTENSIONS_PATH``)
resolve against the ``.env`` file's folder, so the same command gives the same
answer from any working directory.
"""

from __future__ import annotations

import os

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from .envfile import config_from_env, load_env
from ..errors import ConfigError, UnsupportedDriver

#: CairnCMS ``DB_CLIENT`` → (schema-snapshot vendor name, SQLAlchemy driver).
DB_CLIENTS: dict[str, tuple[str, str]] = {
    "pg": ("postgres", "postgresql+psycopg"),
    "postgres": ("postgres", "postgresql+psycopg"),
    "mysql": ("mysql", "mysql+pymysql"),
    "mysql2": ("mysql", "mysql+pymysql"),
    "sqlite3": ("sqlite", "sqlite"),
}
_KNOWN_UNSUPPORTED_CLIENTS = ("cockroachdb", "mssql", "oracledb")

#: Storage drivers CairnCMS ships (api/src/storage/get-storage-driver.ts).
STORAGE_DRIVERS = ("local", "s3", "gcs", "azure", "cloudinary")


@dataclass(frozen=True)
class DatabaseConfig:
    """Where an instance keeps its database.

    :ivar client: the CairnCMS ``DB_CLIENT`` value (``pg``, ``mysql``, ``sqlite3``).
    :ivar vendor: the schema-snapshot vendor name (``postgres``, ``mysql``, ``sqlite``).
    :ivar url: the SQLAlchemy URL, password included (never print it: use :attr:`display_url`).
    :ivar exclude_tables: ``DB_EXCLUDE_TABLES``, tables CairnCMS does not see.
    :ivar plain: the instance sets no TLS for its database (no ``DB_SSL``, no connection string, no
        ``PGSSLMODE``): CairnCMS's drivers then connect in plain text, and so do ours (PyMySQL and libpq
        would otherwise try TLS first: a context with the system's CA certificates per connection, ~55 ms
        of CPU each, and every row encrypted where the server offers TLS).
    """

    client: str
    vendor: str
    url: URL
    exclude_tables: tuple[str, ...] = ()
    plain: bool = False

    @property
    def display_url(self) -> str:
        """The URL with the password hidden, safe for messages and logs."""
        return self.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class LocationConfig:
    """One storage location from ``STORAGE_LOCATIONS``.

    :ivar name: the location name, as stored in ``directus_files.storage``.
    :ivar driver: ``local``, ``s3``, ``gcs``, ``azure`` or ``cloudinary``.
    :ivar options: the driver options CairnCMS builds from ``STORAGE_<NAME>_*``,
        camelCased (``root``, ``bucket``, ``endpoint``, ``forcePathStyle`` …).
        A local ``root`` is already an absolute path.
    """

    name: str
    driver: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """A CairnCMS instance read from its ``.env`` (plus the process environment)."""

    env_path: Path | None
    folder: Path
    env: Mapping[str, Any]
    database: DatabaseConfig
    locations: tuple[LocationConfig, ...]

    @classmethod
    def from_env_file(cls, path: str | Path | None, environ: Mapping[str, str] | None = None) -> Instance:
        """Read an instance from its ``.env`` file.

        :param path: the ``.env`` file; ``None`` uses only the process environment.
        :param environ: the process environment (defaults to :data:`os.environ`).
        :raises ConfigError: on a missing file or an invalid setting.
        """
        env_path = Path(path).expanduser().resolve() if path is not None else None
        folder = env_path.parent if env_path is not None else Path.cwd()
        env = load_env(env_path, environ)
        database = _database_config(env, folder)
        locations = _locations(env, folder)
        return cls(env_path=env_path, folder=folder, env=env, database=database, locations=locations)

    # Identity and the keys a clone has to carry over -----------------------
    @property
    def key(self) -> str | None:
        """``KEY``: the instance identity reported as ``serviceId`` by ``/server/health``."""
        value = self.env.get("KEY")
        return None if value is None else str(value)

    @property
    def secret(self) -> str | None:
        """``SECRET``: the HS256 key CairnCMS signs access tokens with."""
        value = self.env.get("SECRET")
        return None if value is None else str(value)

    @property
    def public_url(self) -> str:
        """``PUBLIC_URL`` (default ``/``)."""
        return str(self.env.get("PUBLIC_URL") or "/")

    @property
    def extensions_path(self) -> Path:
        """``EXTENSIONS_PATH``, absolute."""
        return _resolve(self.folder, str(self.env.get("EXTENSIONS_PATH") or "./extensions"))

    @property
    def label(self) -> str:
        """A short human name for messages: the env file, or the database."""
        return str(self.env_path) if self.env_path else self.database.display_url

    def location(self, name: str) -> LocationConfig:
        """The configured location called ``name``.

        :raises ConfigError: if ``STORAGE_LOCATIONS`` does not list it.
        """
        for location in self.locations:
            if location.name == name:
                return location
        configured = ", ".join(loc.name for loc in self.locations) or "none"
        raise ConfigError(
            f"Storage location {name!r} is not configured on {self.label} (configured: {configured})",
            hint=f"add {name} to STORAGE_LOCATIONS and set STORAGE_{name.upper()}_DRIVER",
        )


def _resolve(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (folder / path).resolve()


def _require(env: Mapping[str, Any], client: str, names: tuple[str, ...], *, may_be_empty: tuple[str, ...] = ()) -> None:
    """Refuse a missing setting; those in ``may_be_empty`` only have to be present.

    CairnCMS checks only that each required key exists (``validateEnv``), so an
    empty ``DB_PASSWORD`` (MariaDB root without a password) is a valid setting.
    """
    missing = [name for name in names if name not in env or (name not in may_be_empty and env[name] in (None, ""))]
    if missing:
        raise ConfigError(
            f"DB_CLIENT={client} needs {', '.join(missing)}, which the instance's env does not set",
            hint=f"set {' and '.join(missing)} in the .env file"
                 + (" (DB_PASSWORD= with no value for a user without a password)" if "DB_PASSWORD" in missing else ""),
        )


def _database_config(env: Mapping[str, Any], folder: Path) -> DatabaseConfig:
    client = env.get("DB_CLIENT")
    if client in (None, ""):
        raise ConfigError(
            "DB_CLIENT is not set in the instance's env",
            hint="set DB_CLIENT to pg, mysql or sqlite3 (the value CairnCMS uses)",
        )
    client = str(client)
    if client not in DB_CLIENTS:
        if client in _KNOWN_UNSUPPORTED_CLIENTS:
            raise UnsupportedDriver(
                f"DB_CLIENT={client} is not supported by cairn-migrate yet",
                hint="CairnCMS documents pg, mysql and sqlite3; migrate through one of those",
            )
        raise ConfigError(
            f"DB_CLIENT={client!r} is not a database client CairnCMS knows",
            hint="use pg, mysql or sqlite3",
        )
    vendor, driver = DB_CLIENTS[client]
    excluded = env.get("DB_EXCLUDE_TABLES") or []
    exclude = tuple(str(t) for t in (excluded if isinstance(excluded, list) else [excluded]))
    if vendor == "sqlite":
        _require(env, client, ("DB_FILENAME",))
        filename = _resolve(folder, str(env["DB_FILENAME"]))
        return DatabaseConfig(client, vendor, URL.create("sqlite", database=str(filename)), exclude)
    connection_string = env.get("DB_CONNECTION_STRING")
    if vendor == "postgres" and connection_string:
        try:
            url = make_url(str(connection_string))
        except Exception as exc:  # sqlalchemy raises ArgumentError with the whole string
            raise ConfigError(
                "DB_CONNECTION_STRING is not a valid connection URL",
                hint="use the form postgres://user:password@host:5432/database",
            ) from exc
        url = url.set(drivername=driver)
        return DatabaseConfig(client, vendor, url, exclude)
    required = ("DB_HOST", "DB_PORT", "DB_DATABASE", "DB_USER")
    _require(env, client, required + (("DB_PASSWORD",) if vendor == "mysql" else ()), may_be_empty=("DB_PASSWORD",))
    try:
        port = int(env["DB_PORT"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"DB_PORT={env['DB_PORT']!r} is not a port number", hint="set DB_PORT to e.g. 5432") from exc
    plain = not any(str(key) == "DB_SSL" or str(key).startswith("DB_SSL__") for key in env) and \
        not (vendor == "postgres" and (env.get("PGSSLMODE") or os.environ.get("PGSSLMODE")))
    password = env.get("DB_PASSWORD")
    query = {"charset": str(env.get("DB_CHARSET") or "utf8mb4")} if vendor == "mysql" else {}
    url = URL.create(
        driver,
        username=str(env["DB_USER"]),
        password=None if password in (None, "") else str(password),
        host=str(env["DB_HOST"]),
        port=port,
        database=str(env["DB_DATABASE"]),
        query=query,
    )
    return DatabaseConfig(client, vendor, url, exclude, plain=plain)


def _location_names(env: Mapping[str, Any]) -> list[str]:
    value = env.get("STORAGE_LOCATIONS", "local")
    items = value if isinstance(value, list) else str(value).split(",")
    names = [str(item).strip() for item in items if str(item).strip()]
    if not names:
        raise ConfigError("STORAGE_LOCATIONS is empty", hint="list at least one location, e.g. STORAGE_LOCATIONS=local")
    return names


def _locations(env: Mapping[str, Any], folder: Path) -> tuple[LocationConfig, ...]:
    locations = []
    for name in _location_names(env):
        prefix = f"STORAGE_{name.upper()}_"
        options = config_from_env(env, prefix)
        driver = options.pop("driver", None)
        if driver in (None, ""):
            raise ConfigError(
                f"Storage location {name!r} has no driver",
                hint=f"set {prefix}DRIVER to one of {', '.join(STORAGE_DRIVERS)}",
            )
        driver = str(driver)
        if driver not in STORAGE_DRIVERS:
            raise ConfigError(
                f'{prefix}DRIVER={driver!r} is not a storage driver CairnCMS knows (Driver "{driver}" doesn\'t exist)',
                hint=f"use one of {', '.join(STORAGE_DRIVERS)}",
            )
        if driver == "local":
            options["root"] = str(_resolve(folder, str(options.get("root") or ".")))
        locations.append(LocationConfig(name=name, driver=driver, options=options))
    return tuple(locations)
