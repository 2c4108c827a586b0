"""The migration ledger: CairnCMS's own ``directus_migrations``, and the one writer of our rows in it.

A migration cairn-migrate records must look, to CairnCMS, exactly like one of
its custom migrations (reference §4): a row ``{version, name}`` with a version
``YYYYMMDD`` + letter that no other migration uses, the title-cased name
CairnCMS derives from the file name, and a ``.js`` file of that name in
``EXTENSIONS_PATH/migrations/`` whose ``up``/``down`` do the same work.  Then
``cairncms database migrate:down`` can revert it and the start-up check
(``validateMigrations``) stays quiet.  This module owns those three things:
version allocation (checked against every version in the table, in the
folder and in our own scripts, because CairnCMS aborts bootstrap on a
collision), name derivation (a port of ``@cairncms/format-title``) and the
twin file.  Nothing else writes ``directus_migrations``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..instance.database import Database
from ..errors import ConfigError, MigrateError

log = logging.getLogger(__name__)

#: First line of every ``.js`` twin we write: how we recognise our files.
MARKER = "// cairn-migrate:"
#: Where ``migrations down`` parks a twin it reverted (not a ``.js`` at the top level, so CairnCMS ignores it).
REVERTED_DIR = ".cairn-reverted"
_VERSION = re.compile(r"^\d{8}[A-Z]$")
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class LedgerConflict(MigrateError):
    """A version is already used by another migration, or the ledger disagrees with the files."""

    exit_code = 3
    http_status = 409
    code = "ledger_conflict"


# --------------------------------------------------------------------------- naming (format-title port)
_SPECIAL = ("2FA 4K 5K 8K AGI BI ChatGPT CTA DateTime FMS GitHub GPT HD IBMid IDs iMac IMAX iOS iPad iPhone iPod LDAP "
            "LinkedIn LLM macOS McDonalds MCP ML MySQL NLG NLP NLU OpenAI PDFs PIM PEFT pH PostgreSQL SEO TTS UHD UUID "
            "XSS YouTube").split()
_ACRONYMS = set(("2D 3D 4WD A2O AI API BIOS CCTV CC CCV CD CD-ROM COBOL CIA CMS CSS CSV CV DIY DVD DB DNA E3 EIN ESPN "
                 "FAQ FAQs FTP FPS FORTRAN FBI HTML HTTP ID IP ISO JS JSON LASER M2A M2M M2MM M2O MMORPG NAFTA NASA NDA "
                 "O2M PDF PHP POP RAM RNGR ROM RPG RTFM RTS SCUBA SDK SITCOM SKU SMTP SQL SSN SWAT TBS TTL TV TNA UI URL "
                 "USB UWP VIP W3C WYSIWYG WWW WWE WWF").split())
_SMALL = set(("about above across after against along among around at before behind below beneath beside besides "
              "between beyond but by concerning despite down during except excepting for from in inside into like near "
              "of off on onto out outside over past regarding since through throughout to toward under underneath until "
              "up upon with within without a an the and that or as if when than because while where so though whether "
              "although nor once unless now").split())


def format_title(title: str) -> str:
    """``@cairncms/format-title``: decamelize, split on space/``-``/``_``, capitalize, special words."""
    text = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", title)
    text = re.sub(r"([A-Z]+)([A-Z][a-z\d]+)", r"\1_\2", text).lower()
    words = [w[:1].upper() + w[1:] for w in re.split(r"\s|-|_", text) if w]
    out = []
    for index, word in enumerate(words):
        lower, upper = word.lower(), word.upper()
        special = next((s for s in _SPECIAL if s.lower() == lower), None)
        if special is not None:
            out.append(special)
        elif upper in _ACRONYMS:
            out.append(upper)
        elif index in (0, len(words) - 1) or len(word) >= 4 or lower not in _SMALL:
            out.append(word)
        else:
            out.append(lower)
    return " ".join(out)


def version_of(filename: str) -> str:
    """CairnCMS's version of a migration file: everything before the first ``-``."""
    return Path(filename).name.split("-", 1)[0]


def name_of(filename: str) -> str:
    """CairnCMS's recorded name: the rest after the first ``-``, joined by ``_``, cut at the first ``.``, title-cased."""
    rest = "_".join(Path(filename).name.split("-")[1:])
    return format_title(rest.split(".", 1)[0])


def file_name(version: str, slug: str) -> str:
    """``20261125A`` + ``move-files-local-to-s3`` → ``20261125A-move-files-local-to-s3.js``."""
    if not _VERSION.match(version):
        raise ConfigError(f"migration version {version!r} is not YYYYMMDD plus one capital letter")
    if not _SLUG.match(slug):
        raise ConfigError(f"migration slug {slug!r} must be lowercase words joined by '-'")
    return f"{version}-{slug}.js"


def first_line(path: Path) -> str:
    """The first line of a (possibly large) file, without reading the rest."""
    with path.open(encoding="utf-8") as fh:
        return fh.readline()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "migration"


# --------------------------------------------------------------------------- the ledger
class MigrationLedger:
    """Reads every migration version the instance knows and writes our rows and twin files.

    :param db: the instance's database.
    :param extensions_path: the instance's ``EXTENSIONS_PATH``.
    """

    def __init__(self, db: Database, extensions_path: Path) -> None:
        self.db = db
        self.folder = Path(extensions_path) / "migrations"

    # reading -----------------------------------------------------------
    def _table(self) -> sa.Table:
        return self.db.table("directus_migrations")

    def recorded(self, connection: sa.Connection | None = None) -> list[dict[str, Any]]:
        """Every row of ``directus_migrations``, in CairnCMS's ``down`` order reversed (oldest first)."""
        table = self._table()
        # raw timestamp values: SQLite mixes epoch-ms integers and text in datetime columns
        query = sa.select(table.c.version, table.c.name,
                          sa.type_coerce(table.c.timestamp, sa.types.NullType()).label("timestamp"))
        with (self.db.engine.connect() if connection is None else _nullctx(connection)) as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        rows.sort(key=lambda r: (_ts(r["timestamp"]), str(r["version"])))
        return rows

    def files(self) -> dict[str, Path]:
        """Version → ``.js`` file in ``EXTENSIONS_PATH/migrations`` (every ``.js`` counts, as in CairnCMS)."""
        found: dict[str, Path] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                if path.name.endswith(".js") and path.is_file():
                    found.setdefault(version_of(path.name), path)
        return found

    def reverted(self) -> dict[str, Path]:
        """Version → twin parked by ``migrations down`` (not seen by CairnCMS)."""
        folder = self.folder / REVERTED_DIR
        if not folder.is_dir():
            return {}
        return {version_of(p.name): p for p in sorted(folder.glob("*.js"))}

    def used_versions(self, extra: Iterable[str] = (), *, reverted: bool = True) -> set[str]:
        """Every version in the table, in the folder (active and, unless told, reverted) and in ``extra``."""
        used = {str(r["version"]) for r in self.recorded()}
        used.update(self.files())
        if reverted:
            used.update(self.reverted())
        used.update(extra)
        return used

    # versions ------------------------------------------------------------
    def allocate_version(self, day: dt.date | None = None, extra: Iterable[str] = ()) -> str:
        """The first free ``YYYYMMDD`` + letter for ``day`` (default today, UTC).

        :raises LedgerConflict: all 26 letters of the day are taken.
        """
        day = day or dt.datetime.now(dt.timezone.utc).date()
        used = self.used_versions(extra)
        prefix = day.strftime("%Y%m%d")
        for letter in string.ascii_uppercase:
            if prefix + letter not in used:
                return prefix + letter
        raise LedgerConflict(f"every migration version {prefix}A..{prefix}Z is already used",
                             hint="pass an explicit version for another day")

    def ensure_free(self, version: str, extra: Iterable[str] = (), *, reapply: bool = False) -> None:
        """:raises LedgerConflict: when ``version`` is used anywhere (CairnCMS would abort bootstrap)."""
        if not _VERSION.match(version):
            raise ConfigError(f"migration version {version!r} is not YYYYMMDD plus one capital letter",
                              hint="use e.g. 20261125A")
        if version in self.used_versions(extra, reverted=not reapply):
            raise LedgerConflict(
                f"migration version {version} is already used on this instance (directus_migrations or "
                f"{self.folder}); CairnCMS aborts with 'Migration keys collide!' on duplicates",
                hint="pick another letter or day")

    # writing ---------------------------------------------------------------
    def write_twin(self, version: str, slug: str, source: str) -> Path:
        """Write ``EXTENSIONS_PATH/migrations/<version>-<slug>.js`` atomically (replace on rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / file_name(version, slug)
        reverted = self.folder / REVERTED_DIR / path.name
        if reverted.exists():
            reverted.unlink()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, path)
        log.info("wrote migration twin %s", path)
        return path

    def retire_twin(self, version: str) -> Path | None:
        """Park our twin of ``version`` under ``.cairn-reverted/`` (so bootstrap does not re-run it)."""
        path = self.files().get(version)
        if path is None:
            return None
        if not first_line(path).startswith(MARKER):
            raise LedgerConflict(f"{path} was not written by cairn-migrate; refusing to move it")
        target = self.folder / REVERTED_DIR / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return target

    def restore_twin(self, version: str) -> Path | None:
        """Undo :meth:`retire_twin` (``migrations up`` of a reverted generated migration)."""
        path = self.reverted().get(version)
        if path is None:
            return None
        target = self.folder / path.name
        os.replace(path, target)
        return target

    def record(self, connection: sa.Connection, version: str, name: str) -> None:
        """Insert the row CairnCMS's runner would insert after ``up()`` (``timestamp`` takes its default)."""
        table = self._table()
        exists = connection.execute(sa.select(table.c.version).where(table.c.version == version)).first()
        if exists is not None:
            raise LedgerConflict(f"migration {version} is already recorded in directus_migrations")
        connection.execute(table.insert().values(version=version, name=name))

    def unrecord(self, connection: sa.Connection, version: str) -> None:
        """Delete the row of ``version`` (what CairnCMS's ``migrate:down`` does after ``down()``)."""
        table = self._table()
        result = connection.execute(table.delete().where(table.c.version == version))
        if result.rowcount != 1:
            raise LedgerConflict(f"migration {version} is not recorded in directus_migrations")


class _nullctx:
    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sa.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


def _ts(value: Any) -> str:
    """Sortable text of a timestamp that may be a datetime, epoch ms or text (SQLite mixes them)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    return str(value).replace("T", " ")
