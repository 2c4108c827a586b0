"""The database layer: engines for the three vendors and streaming reads.

CairnCMS keeps everything in one schema: its ``directus_*`` system tables and
the user's collections side by side.  This module knows which is which, how to
count rows, how to read a table without loading it, and how to recognise the
platform (CairnCMS or Directus, and which version) from the migration ledger
and the shape of the tables.  Library errors are translated here, once, into
errors that name the setting to fix.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError, ProgrammingError

from . import timeouts
from ..errors import ConfigError, InstanceUnreachable
from .instance import DatabaseConfig, Instance

log = logging.getLogger(__name__)

#: The 20 tables a CairnCMS 1.0.0-beta.4 bootstrap creates (reference §1.1).
CAIRNCMS_SYSTEM_TABLES = (
    "directus_activity",
    "directus_collections",
    "directus_dashboards",
    "directus_fields",
    "directus_files",
    "directus_flows",
    "directus_folders",
    "directus_migrations",
    "directus_notifications",
    "directus_operations",
    "directus_panels",
    "directus_permissions",
    "directus_presets",
    "directus_relations",
    "directus_revisions",
    "directus_roles",
    "directus_sessions",
    "directus_settings",
    "directus_shares",
    "directus_users",
)

#: Migrations only CairnCMS has (Appendix A); their presence tells it from Directus.
CAIRNCMS_MIGRATIONS = ("20260417A", "20260418A", "20260515A")

#: Latest built-in migration → CairnCMS release that ships it as its last one.
CAIRNCMS_RELEASES = {"20260515A": "1.0.0-beta.4"}

#: The last migration of Directus 9 (the v10 line starts with 20230401A).
DIRECTUS_10_FIRST_MIGRATION = "20230401A"


@dataclass(frozen=True)
class Platform:
    """What wrote this database.

    :ivar product: ``cairncms``, ``directus`` or ``unknown`` (no system tables).
    :ivar version: the release (``1.0.0-beta.4``), a major line (``9``/``10+``) or ``None``.
    :ivar latest_migration: the highest recorded ``directus_migrations.version``.
    :ivar migrations: how many rows ``directus_migrations`` holds.
    """

    product: str
    version: str | None
    latest_migration: str | None
    migrations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "version": self.version,
            "latest_migration": self.latest_migration,
            "migrations": self.migrations,
        }


def _translate(exc: Exception, config: DatabaseConfig) -> Exception:
    """Turn a driver error into one line that names the setting to fix."""
    text = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
    where = config.display_url
    lowered = text.lower()
    if config.vendor == "sqlite":
        return ConfigError(
            f"The SQLite database {config.url.database} cannot be opened: {text}",
            hint="check DB_FILENAME and the file's permissions",
        )
    if "password authentication failed" in lowered or "access denied" in lowered:
        return ConfigError(
            f"The database at {where} rejected the credentials: {text}",
            hint="check DB_USER and DB_PASSWORD",
        )
    if ("database" in lowered and "does not exist" in lowered) or "unknown database" in lowered:
        return ConfigError(
            f"The database named by DB_DATABASE does not exist on {where}",
            hint="create it, or fix DB_DATABASE",
        )
    if "role" in lowered and "does not exist" in lowered:
        return ConfigError(f"The database user does not exist on {where}", hint="check DB_USER")
    if "timed out" in lowered or "timeout" in lowered:
        return InstanceUnreachable(
            f"The database at {where} did not answer in time: {text}",
            hint=f"check DB_HOST and DB_PORT; {timeouts.hint(timeouts.CONNECT_ENV, timeouts.READ_ENV)}",
        )
    return InstanceUnreachable(
        f"The database at {where} does not answer: {text}",
        hint="is the server running? check DB_HOST and DB_PORT",
    )


def _server_connect_args(vendor: str, plain: bool = False) -> dict[str, Any]:
    """Driver arguments for PostgreSQL/MariaDB: the timeouts of :mod:`.timeouts`, sessions in UTC, and no
    TLS when the instance sets none (``plain``: :class:`~.instance.DatabaseConfig`).

    UTC because MariaDB converts TIMESTAMP values to and from the session zone
    and PostgreSQL renders timestamptz in it.  libpq's ``connect_timeout``
    covers the whole login; PyMySQL's covers only the TCP connect, so the
    handshake reads get it as their read timeout (see :func:`_mysql_read_timeout`).
    """
    connect, read = timeouts.connect_timeout(), timeouts.read_timeout()
    if vendor == "postgres":
        return {"connect_timeout": max(2, math.ceil(connect)), "options": "-c timezone=UTC",
                "keepalives": 1, "keepalives_idle": min(60, math.ceil(read)), "keepalives_interval": 10,
                "keepalives_count": 3, "tcp_user_timeout": math.ceil(read * 1000),
                **({"sslmode": "disable"} if plain else {})}
    return {"connect_timeout": connect, "read_timeout": connect, "write_timeout": read,
            "init_command": "SET time_zone = '+00:00'", **({"ssl_disabled": True} if plain else {})}


def _mysql_read_timeout(dbapi_connection: Any, _record: Any) -> None:
    """After the handshake, reads may take ``CAIRN_MIGRATE_READ_TIMEOUT`` (a long aggregate is no hang).

    PyMySQL has no public setter; it applies ``_read_timeout`` to the socket
    before every read.
    """
    if hasattr(dbapi_connection, "_read_timeout"):
        dbapi_connection._read_timeout = timeouts.read_timeout()


def open_engine(instance: Instance | DatabaseConfig, *, check: bool = True, create: bool = False) -> Engine:
    """Create an engine for an instance's database and (by default) prove it answers.

    A SQLite file that does not exist is an error unless ``create`` (an import
    target): a typo in ``DB_FILENAME`` must not produce an empty "instance".

    :raises ConfigError: wrong file, credentials or database name.
    :raises InstanceUnreachable: the server does not answer.
    """
    config = instance.database if isinstance(instance, Instance) else instance
    kwargs: dict[str, Any] = {"future": True}
    if config.vendor == "sqlite":
        import os

        path = config.url.database or ""
        if create and not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        elif not os.path.isfile(path):
            raise ConfigError(
                f"DB_FILENAME points at {path}, which does not exist",
                hint="fix DB_FILENAME in the instance's .env (relative paths resolve against its folder)",
            )
        kwargs["connect_args"] = {"timeout": timeouts.sqlite_busy_timeout()}
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = _server_connect_args(config.vendor, config.plain)
    try:
        engine = sa.create_engine(config.url, **kwargs)
    except NoSuchModuleError as exc:  # pragma: no cover - drivers are dependencies
        raise ConfigError(f"No SQLAlchemy driver for {config.url.drivername}", hint="reinstall cairn-migrate") from exc
    if config.vendor == "mysql":
        sa.event.listen(engine, "connect", _mysql_read_timeout)
    if config.vendor == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # CairnCMS turns foreign keys on per connection; so do we, so that
            # writes behave the same as the instance's own.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

    if check:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise _translate(exc, config) from exc
    return engine


class Database:
    """One instance's database: its tables, their sizes and their rows.

    :param engine: from :func:`open_engine`.
    :param config: the instance's :class:`DatabaseConfig` (vendor, excluded tables).
    """

    def __init__(self, engine: Engine, config: DatabaseConfig) -> None:
        self.engine = engine
        self.config = config
        self._metadata = sa.MetaData()

    @classmethod
    def open(cls, instance: Instance, *, create: bool = False) -> Database:
        """Open and check the database of ``instance`` (``create``: a new SQLite file is fine)."""
        return cls(open_engine(instance, create=create), instance.database)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def vendor(self) -> str:
        """``postgres``, ``mysql`` or ``sqlite``; on MySQL-compatible servers see :meth:`server_version`."""
        return self.config.vendor

    def server_version(self) -> str:
        """The server's own version string (``15.19``, ``10.11.19-MariaDB`` …)."""
        with self.engine.connect() as conn:
            if self.vendor == "sqlite":
                return str(conn.execute(sa.text("select sqlite_version()")).scalar())
            if self.vendor == "postgres":
                return str(conn.execute(sa.text("show server_version")).scalar())
            return str(conn.execute(sa.text("select version()")).scalar())

    # Tables -----------------------------------------------------------------
    def table_names(self) -> list[str]:
        """Every table CairnCMS sees, sorted (``DB_EXCLUDE_TABLES`` left out)."""
        names = sa.inspect(self.engine).get_table_names()
        excluded = set(self.config.exclude_tables)
        return sorted(name for name in names if name not in excluded and not name.startswith("sqlite_"))

    def system_tables(self) -> list[str]:
        return [name for name in self.table_names() if name.startswith("directus_")]

    def user_tables(self) -> list[str]:
        return [name for name in self.table_names() if not name.startswith("directus_")]

    def table(self, name: str) -> sa.Table:
        """The reflected table (cached per :class:`Database`)."""
        if name not in self._metadata.tables:
            try:
                return sa.Table(name, self._metadata, autoload_with=self.engine)
            except sa.exc.NoSuchTableError as exc:
                raise ConfigError(f"Table {name!r} does not exist in {self.config.display_url}") from exc
        return self._metadata.tables[name]

    def columns(self, name: str) -> list[str]:
        if name in self._metadata.tables:
            return [column.name for column in self._metadata.tables[name].columns]
        return [column["name"] for column in sa.inspect(self.engine).get_columns(name)]

    def row_count(self, name: str) -> int:
        return self.row_counts([name])[name]

    def row_counts(self, names: Sequence[str]) -> dict[str, int]:
        """Exact row counts of ``names``, in one connection (no reflection needed)."""
        counts = {}
        with self.engine.connect() as conn:
            for name in names:
                counts[name] = int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(name))).scalar_one())
        return counts

    def stream_rows(
        self,
        name: str,
        *,
        columns: Sequence[str] | None = None,
        where: sa.ColumnElement[bool] | None = None,
        order_by: Sequence[str] | None = None,
        batch_size: int = 1000,
        connection: sa.Connection | None = None,
    ) -> Iterator[Mapping[str, Any]]:
        """Yield the rows of ``name`` as mappings, ``batch_size`` at a time.

        Values are what the driver returns (no type conversion).  Uses a server-side cursor (``stream_results``) on PostgreSQL and MySQL,
        so memory stays flat whatever the table's size.  Pass ``connection``
        to read inside a caller's transaction (e.g. one consistent snapshot).
        """
        table = self.table(name)
        wanted = list(columns) if columns else [column.name for column in table.columns]
        # Raw driver values, no SQLAlchemy result processing: CairnCMS's SQLite
        # datetime columns mix epoch-ms integers and text, which the DATETIME
        # processor cannot parse; callers normalise values themselves.
        selected = [sa.type_coerce(table.c[c], sa.types.NullType()).label(c) for c in wanted]
        query = sa.select(*selected)
        if where is not None:
            query = query.where(where)
        if order_by:
            query = query.order_by(*(table.c[c] for c in order_by))
        if connection is not None:
            yield from self._stream(connection, query, batch_size)
            return
        with self.engine.connect() as conn:
            yield from self._stream(conn, query, batch_size)

    @staticmethod
    def _stream(conn: sa.Connection, query: sa.Select[Any], batch_size: int) -> Iterator[Mapping[str, Any]]:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(query)
        for partition in result.mappings().partitions(batch_size):
            yield from partition

    def stream_tuples(
        self, name: str, columns: Sequence[str], *, connection: sa.Connection, batch_size: int = 5000,
        order_by: Sequence[str] = (),
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``name`` as plain tuples in ``columns`` order: the export's hot path.

        On PostgreSQL the values of types whose text form is already neutral
        (json, uuid, timestamps, numeric, dates) arrive as that text, so no
        Python object is built and taken apart again for each of them.
        """
        restore = None
        if self.vendor == "postgres":
            _pg_text_loaders(connection)
        elif self.vendor == "mysql":
            restore = _mysql_text_instants(connection)
        query = sa.select(*[sa.column(c) for c in columns]).select_from(sa.table(name))
        if order_by:  # the export's primary-key order (see operations.export._order)
            query = query.order_by(*[sa.column(c) for c in order_by])
        try:
            result = connection.execution_options(stream_results=True, yield_per=batch_size).execute(query)
            for partition in result.partitions(batch_size):
                yield from partition
        finally:
            if restore is not None:
                restore()

    # Platform ---------------------------------------------------------------
    def platform(self) -> Platform:
        """Recognise CairnCMS (and its release) or Directus 9/10 from the ledger and table shape."""
        names = set(self.table_names())
        if "directus_collections" not in names or "directus_migrations" not in names:
            return Platform("unknown", None, None, 0)
        migrations = self.table("directus_migrations")
        try:
            with self.engine.connect() as conn:
                versions = [str(v) for v in conn.execute(sa.select(migrations.c.version)).scalars()]
        except ProgrammingError:  # pragma: no cover - a damaged ledger
            versions = []
        latest = max(versions) if versions else None
        roles_have_key = "directus_roles" in names and "key" in self.columns("directus_roles")
        if roles_have_key or any(v in versions for v in CAIRNCMS_MIGRATIONS):
            cairn_latest = max((v for v in versions if v in CAIRNCMS_MIGRATIONS), default=None)
            version = CAIRNCMS_RELEASES.get(cairn_latest or "")
            return Platform("cairncms", version, latest, len(versions))
        major = "10+" if latest and latest >= DIRECTUS_10_FIRST_MIGRATION else "9"
        return Platform("directus", major, latest, len(versions))


_PG_TEXT_TYPES = ("json", "jsonb", "uuid", "timestamptz", "timestamp", "date", "time", "numeric")


def _pg_text_loaders(connection: sa.Connection) -> None:
    """Have psycopg hand these types out as their PostgreSQL text (on this connection only)."""
    from psycopg.types.string import TextLoader

    adapters = connection.connection.driver_connection.adapters  # type: ignore[union-attr]
    for type_name in _PG_TEXT_TYPES:
        adapters.register_loader(type_name, TextLoader)


def _mysql_text_instants(connection: sa.Connection) -> Callable[[], None]:
    """Have PyMySQL hand ``DATETIME`` and ``TIMESTAMP`` values out as MariaDB's text (this connection, until the
    returned function is called): its converter (a regex and a ``datetime`` per value, in Python) and ours back to
    text were two fifths of a MariaDB export; :func:`~cairn_migrate.bundle.values.fast_decoder` reads the text."""
    from pymysql.constants import FIELD_TYPE

    raw = connection.connection.driver_connection
    before = raw.decoders  # type: ignore[union-attr]
    raw.decoders = {k: v for k, v in before.items() if k not in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP)}  # type: ignore[union-attr]

    def restore() -> None:
        raw.decoders = before  # type: ignore[union-attr]
    return restore


@contextlib.contextmanager
def consistent_snapshot(db: Database) -> Iterator[sa.Connection]:
    """One read transaction that sees the whole database at a single moment.

    PostgreSQL: ``REPEATABLE READ`` (a snapshot taken at the first query);
    MariaDB/MySQL: ``START TRANSACTION WITH CONSISTENT SNAPSHOT``; SQLite: a
    read transaction, which holds its shared lock (or WAL snapshot) until it
    ends.  Every table and the file list read through the connection yielded
    here describe the same point in time.
    """
    if db.vendor == "postgres":
        with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            with conn.begin():
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
                yield conn
    elif db.vendor == "mysql":
        with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("COMMIT")
    else:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            try:
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")  # take the read lock now
                yield conn
            finally:
                conn.exec_driver_sql("COMMIT")
