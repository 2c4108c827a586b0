"""Where the sidecar keeps its own state (jobs, freeze flag, copy ledgers), and whose it is.

Never in the CairnCMS database: an embedded SQLite file by default, any
SQLAlchemy URL by ``CAIRN_MIGRATE_STATE_URL``.  Several sidecars (one per
instance) may share one state store, so every record carries the identity of
the instance it belongs to (:func:`instance_scope`) and every read filters on
it.  Records written before scoping existed have no instance: nobody sees them
(see :func:`add_missing_column`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from ..instance.instance import Instance

#: The port a server database listens on when its URL names none.
_DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}


def default_state_url(environ: Mapping[str, str] | None = None) -> str:
    """``$CAIRN_MIGRATE_STATE_URL``, else ``sqlite:///<XDG_STATE_HOME or ~/.local/state>/cairn-migrate/state.db``."""
    environ = os.environ if environ is None else environ
    if environ.get("CAIRN_MIGRATE_STATE_URL"):
        return environ["CAIRN_MIGRATE_STATE_URL"]
    base = environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return f"sqlite:///{Path(base) / 'cairn-migrate' / 'state.db'}"


def instance_scope(instance: Instance) -> str:
    """The identity of ``instance`` that its records in the state store carry (32 hex digits).

    A digest of ``KEY``, the vendor and where the database is: the SQLite file's
    absolute path, or host, port and database name.  ``KEY`` alone is not enough
    (a clone carries its source's ``KEY``), nor the database alone (a new
    instance bootstrapped on the same database has a new ``KEY``).  The user
    and password are left out, so rotating credentials keeps the state; changing
    ``KEY``, the host name or the database (even ``localhost`` → ``127.0.0.1``)
    makes a new identity that does not see the old records.
    """
    database = instance.database
    url = database.url
    if database.vendor == "sqlite":
        where = str(Path(url.database or "").expanduser().resolve())
    else:
        port = url.port or _DEFAULT_PORTS.get(database.vendor, 0)
        where = f"{(url.host or '').lower()}:{port}/{url.database or ''}"
    ident = "\n".join([instance.key or "", database.vendor, where])
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


def database_identity(instance: Instance) -> str:
    """Where ``instance``'s data lives, spelled one way (32 hex digits): two ``.env`` files naming the same
    database give the same value, whatever their host spelling.

    The vendor and, for SQLite, the file's absolute path (symlinks resolved); for a server database its host
    resolved to an address (``localhost`` and ``127.0.0.1`` are one host; a name that does not resolve stays
    as written, lower-cased), the port (the vendor's default when none is given) and the database name.
    ``KEY`` is left out: the rows are the database's, whichever instance reads them.  The content ID map
    (:mod:`cairn_migrate.content.keys`) and the same-instance checks use it; jobs keep :func:`instance_scope`.
    """
    database = instance.database
    url = database.url
    if database.vendor == "sqlite":
        where = str(Path(url.database or "").expanduser().resolve())
    else:
        port = url.port or _DEFAULT_PORTS.get(database.vendor, 0)
        where = f"{canonical_host(url.host or 'localhost')}:{port}/{url.database or ''}"
    ident = "\n".join(["database", database.vendor, where])
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


def canonical_host(host: str) -> str:
    """``host`` as one address: loopback names are ``127.0.0.1``; a name resolves to its first address (sorted)."""
    host = host.strip("[]").lower()
    if host.startswith("/"):  # a Unix socket directory
        return str(Path(host).resolve())
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return host
    addresses = sorted({info[4][0] for info in infos})
    if any(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return "127.0.0.1"
    return addresses[0] if addresses else host


def legacy_instance_label(instance: Instance) -> str:
    """What copy ledgers of earlier versions recorded as the instance: ``KEY``, else the database URL.

    Shared by a clone and its source, so it never grants access to records; it
    only keeps their moved-away objects from being taken for orphans.
    """
    return instance.key or instance.database.display_url


def create_tables(engine: Engine, metadata: sa.MetaData) -> None:
    """Create the tables of ``metadata`` that do not exist yet.

    Two threads or sidecars creating them at once is fine: the loser's
    ``CREATE TABLE`` fails on a table that now exists, and a second pass finds
    everything there.
    """
    try:
        metadata.create_all(engine)
    except DBAPIError:
        metadata.create_all(engine)


def add_missing_column(engine: Engine, table: sa.Table, name: str) -> None:
    """Add column ``name`` of ``table`` to a state store created before the column existed.

    The column is added nullable, so the rows already there keep ``NULL``: for
    the ``instance`` column that means "no instance", visible to no sidecar.
    Two sidecars upgrading the same store at once are fine: the loser's
    ``ALTER`` fails and the column is there.
    """
    def has_column() -> bool:
        return name in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}

    if has_column():
        return
    column = table.c[name]
    ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(ddl))
    except DBAPIError:
        if not has_column():
            raise
    for index in table.indexes:
        if name in index.columns:
            index.create(engine, checkfirst=True)
