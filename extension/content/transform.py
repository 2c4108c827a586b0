"""A content move's value transforms: the one place a source row is finished before the target sees it.

:class:`Finisher` takes each batch of rows right after they are read from the source (in the
source's keys, values in the neutral form of :mod:`cairn_migrate.bundle.values`) and, in this order:

1. masks them with a masking profile (:func:`cairn_migrate.masking.mask_row`, the same fakes as
   ``export --full --mask`` for the same salt, or the same profile and source ``SECRET``);
2. rewrites the source's URLs (:class:`UrlRewriter`) in string, text (rich text, markdown) and JSON
   columns: ``<source PUBLIC_URL>`` becomes the target's, and asset URLs
   (``<PUBLIC_URL>/assets/<file id>[/name][?…]``, or host-relative ``/assets/<file id>``) name the
   file's id on the target (the ID the move resolved it to);
3. calls the operator's ``--transform module:function`` as ``f(collection, row, context) -> row | None``.

A row that comes back ``None`` (a collection the profile drops, or the function's choice) is not
written; references to it are treated like references to a row the move does not carry.  Key
rewriting, comparison with the target and writing happen after (:mod:`.writer`).

Code named by ``--transform`` runs on the machine running the move: the CLI's user is that host's
operator; over HTTP the sidecar refuses it unless its operator lists it in ``CAIRN_MIGRATE_TRANSFORMS``.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from ..errors import InvalidInput

#: Neutral column types whose values may hold URLs (rich text and markdown are ``text`` columns).
TEXT_TYPES = frozenset({"string", "text"})
JSON_TYPE = "json"
#: The setting (sidecar config or environment) listing the ``module:function`` strings HTTP callers may name.
TRANSFORMS_SETTING = "CAIRN_MIGRATE_TRANSFORMS"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: What may follow a URL's base: the end of the URL (a path, query, fragment, quote, bracket, space or the end).
_END = r"(?=[/?#\s\"'<>)\]\\,;]|$)"
#: the part every asset URL the pattern finds holds (a cheap test before the full pattern)
#: the gate before the asset pattern: ASCII letters in any case, as CairnCMS's router (Express) matches its
#: routes (its case-blind JavaScript regex folds no other letter to these: "/aſſets/" is no asset URL), and as
#: the source database's prefilter (:func:`_may_name_asset`) folds them
_ASSETS = re.compile("/assets/", re.IGNORECASE | re.ASCII)
_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

RowFunction = Callable[[str, dict[str, Any], Mapping[str, Any]], "dict[str, Any] | None"]


def _base(url: str | None) -> tuple[str, str]:
    """``(origin + path, path)`` of a PUBLIC_URL without its trailing slash; ``("", "")`` when it is not absolute."""
    if not url:
        return "", ""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "", path if url.startswith("/") else ""
    return f"{parts.scheme}://{parts.netloc}{path}", path


class UrlRewriter:
    """The source's URLs in text → the target's, asset URLs with the file's id on the target.

    :param source_url: the source's ``PUBLIC_URL``.
    :param target_url: the target's ``PUBLIC_URL``.
    :param file_id: a source file id → its id on the target (None: the move does not carry it; the id stays).
    """

    def __init__(self, source_url: str | None, target_url: str | None, file_id: Callable[[str], str | None]) -> None:
        self.source, source_path = _base(source_url)
        self.target, self.target_path = _base(target_url)
        if not self.target and target_url and not target_url.startswith(("http://", "https://")):
            self.target = self.target_path  # a relative PUBLIC_URL ("/"): absolute source URLs become host-relative
        self.file_id = file_id
        self.rewritten = 0
        #: asset ids named in text that the move does not carry (their URLs keep the id)
        self.missing: set[str] = set()
        parts = []
        if self.source:
            parts.append(rf"(?P<abs>{re.escape(self.source)})(?:/assets/(?P<aid>{_UUID}))?{_END}")
        # host-relative asset URLs: not preceded by anything that makes them part of another URL or word
        parts.append(rf"(?<![\w.:/%-])(?P<rel>{re.escape(source_path)})/assets/(?P<rid>{_UUID}){_END}")
        self.pattern = re.compile("|".join(parts), re.IGNORECASE)

    def _replace(self, match: re.Match[str]) -> str:
        asset = match.group("aid") if match.groupdict().get("abs") else None
        if match.groupdict().get("abs"):
            base = self.target
        else:
            asset, base = match.group("rid"), self.target_path
        if asset is None:
            out = base
        else:
            key = asset.lower()
            mapped = self.file_id(key)
            if mapped is None:
                self.missing.add(key)
                mapped = key
            out = f"{base}/assets/{mapped}"
        return out

    def _sub(self, value: str) -> str:
        if "/assets/" not in value and (not self.source or self.source.lower() not in value.lower()):
            return value
        return self.pattern.sub(self._replace, value)

    def text(self, value: str) -> str:
        """``value`` with the source's URLs rewritten (the same object when it holds none)."""
        new = self._sub(value)
        if new != value:
            self.rewritten += 1
            return new
        return value

    def structure(self, value: Any) -> Any:
        """Every string inside a parsed JSON value rewritten (dict keys included); not counted."""
        if isinstance(value, str):
            return self._sub(value)
        if isinstance(value, list):
            return [self.structure(v) for v in value]
        if isinstance(value, dict):
            return {(self._sub(k) if isinstance(k, str) else k): self.structure(v) for k, v in value.items()}
        return value

    def json_text(self, value: Any) -> Any:
        """A JSON column's value (JSON text in the neutral form): parsed, walked, written back only if changed."""
        if not isinstance(value, str):
            changed = self.structure(value)
            self.rewritten += changed != value
            return changed
        if "/assets/" not in value and (not self.source or self.source.lower() not in value.lower()):
            return value
        try:
            parsed = json.loads(value)
        except ValueError:
            return value  # not JSON: left as it is (never a regex over a value we cannot read)
        changed = self.structure(parsed)
        if changed == parsed:
            return value
        self.rewritten += 1
        return json.dumps(changed, ensure_ascii=False, separators=(",", ":"))

    def asset_ids(self, value: Any, kind: str) -> set[str]:
        """The file ids the source's asset URLs in ``value`` name (to carry their files)."""
        found: set[str] = set()
        texts: Iterable[str]
        if kind == JSON_TYPE and isinstance(value, str):
            try:
                texts = _strings(json.loads(value))
            except ValueError:
                texts = ()
        elif kind == JSON_TYPE:
            texts = _strings(value)
        else:
            texts = (value,) if isinstance(value, str) else ()
        for text in texts:
            if not _ASSETS.search(text):
                continue  # an asset URL always holds "/assets/" (the pattern is case-blind): no regex over the rest
            for match in self.pattern.finditer(text):
                asset = match.group("aid") if match.groupdict().get("abs") else match.group("rid")
                if asset:
                    found.add(asset.lower())
        return found


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                yield k
            yield from _strings(v)


def load_function(spec: str) -> RowFunction:
    """The function an import string ``module:function`` names.

    :raises InvalidInput: a malformed string, a module that does not import, or no such callable.
    """
    if not _IMPORT_STRING.match(spec or ""):
        raise InvalidInput(f"--transform {spec!r} is not an import string module:function",
                           hint="name a function as package.module:function (importable on this machine)")
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"--transform {spec}: module {module_name} does not import ({exc})",
                           hint="install the module on the machine running the move, or fix PYTHONPATH") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InvalidInput(f"--transform {spec}: {module_name} has no function {name}",
                           hint="name a function f(collection, row, context) -> row or None")
    return function  # type: ignore[no-any-return]


def allowed_transforms(raw: Any) -> set[str]:
    """The import strings an allow-list setting names (comma, space or newline separated)."""
    entries = raw if isinstance(raw, (list, tuple)) else re.split(r"[\s,]+", str(raw or ""))
    return {str(e).strip() for e in entries if str(e).strip()}


def refuse_unlisted(spec: str, allowed: Iterable[str]) -> None:
    """Refuse ``spec`` unless the sidecar's operator listed it (an instance's admin never runs code on the host).

    :raises InvalidInput: (422) ``spec`` is not in ``CAIRN_MIGRATE_TRANSFORMS``.
    """
    if spec not in set(allowed):
        raise InvalidInput(f"transform {spec!r} would run code on the sidecar's host, and its operator does not "
                           f"allow it ({TRANSFORMS_SETTING})",
                           hint=f"run the move with the CLI on that host, or the sidecar's operator adds {spec} to "
                           f"{TRANSFORMS_SETTING}", details={"field": "transform", "setting": TRANSFORMS_SETTING})


@dataclass
class Finisher:
    """Masking, URL rewriting and the operator's function, applied to each batch of source rows."""

    urls: UrlRewriter | None = None
    mask: Any = None  # a cairn_migrate.masking.MaskProfile
    function: RowFunction | None = None
    context: dict[str, Any] = field(default_factory=dict)
    #: collection → rows not written because the profile or the function dropped them
    dropped: dict[str, int] = field(default_factory=dict)
    #: collection → rows the function changed
    changed: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.urls is not None or self.mask is not None or self.function is not None

    def rows(self, collection: str, pk: str, kinds: Mapping[str, str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The finished rows of one batch (in source keys); dropped ones are left out."""
        from ..masking import mask_row

        out = []
        texts = [n for n, kind in kinds.items() if kind in TEXT_TYPES]
        jsons = [n for n, kind in kinds.items() if kind == JSON_TYPE]
        for row in rows:
            key = row[pk]
            finished: dict[str, Any] | None = row
            if self.mask is not None:
                finished = mask_row(self.mask, collection, finished)
            if finished is not None and self.urls is not None:
                for name in texts:
                    value = finished.get(name)
                    if isinstance(value, str):
                        finished[name] = self.urls.text(value)
                for name in jsons:
                    if finished.get(name) is not None:
                        finished[name] = self.urls.json_text(finished[name])
            if finished is not None and self.function is not None:
                before = dict(finished)
                result = self.function(collection, dict(finished), self.context)
                if result is not None and not isinstance(result, Mapping):
                    raise InvalidInput(f"--transform returned {type(result).__name__} for a {collection} row",
                                       hint="return the row (a dict), or None to leave the row out")
                if result is not None and (unknown := sorted(set(result) - set(row))):
                    raise InvalidInput(f"--transform returned field(s) {', '.join(unknown)} that {collection} does not "
                                       "have (on both instances)", hint="return the row with its own fields only")
                finished = None if result is None else {**finished, **result}
                if finished is not None and finished != before:
                    self.changed[collection] = self.changed.get(collection, 0) + 1
            if finished is None:
                self.dropped[collection] = self.dropped.get(collection, 0) + 1
                continue
            if finished.get(pk) != key:
                raise InvalidInput(f"--transform changed the key of {collection} row {key!r}",
                                   hint="a transform may change values, not the row's primary key")
            out.append(finished)
        return out

    def report(self) -> dict[str, Any]:
        """What the report's ``transform`` says."""
        out: dict[str, Any] = {}
        if self.mask is not None:
            out["mask"] = {"profile": self.mask.profile.name, "origin": self.mask.profile.origin,
                           "salt": self.mask.salt}
        if self.urls is not None:
            out["urls"] = {"from": self.urls.source or "(relative)", "to": self.urls.target or "(relative)",
                           "values_rewritten": self.urls.rewritten,
                           "assets_not_moved": sorted(self.urls.missing)}
        if self.function is not None:
            out["function"] = {"name": self.context.get("transform"), "changed": dict(sorted(self.changed.items()))}
        if self.dropped:
            out["dropped"] = dict(sorted(self.dropped.items()))
        return out


def _may_name_asset(column: str, kind: str, vendor: str) -> sa.ColumnElement[bool]:
    """A condition true of every value in which :meth:`UrlRewriter.asset_ids` can find an asset URL (and of some
    others): a text holds ``/assets/`` in any case; a JSON text holds ``assets`` in any case (its slashes may be
    escaped) or a ``\\u`` escape (which could spell any letter).  The same test the Python side makes first.

    On PostgreSQL the text is lowered under the ``C`` collation: ASCII letters only, which is all ``/assets/``
    has (and all :data:`_ASSETS` folds), and several times cheaper for the server than the database's own
    collation (a scan of 100k 1 KB articles: 0.57 s against 0.16 s)."""
    text = sa.cast(sa.column(column), sa.Text) if kind == JSON_TYPE or vendor == "postgres" else sa.column(column)
    folded = sa.func.lower(text.collate("C") if vendor == "postgres" else text)  # (a text cast takes a collation)
    if kind == JSON_TYPE:
        return sa.or_(folded.contains("assets", autoescape=True), text.contains("\\u", autoescape=True))
    return folded.contains("/assets/", autoescape=True)


def asset_files(src: Any, conn: sa.Connection, closure: Any, graph: Any,
                kinds_of: Callable[[str], Mapping[str, str]], urls: UrlRewriter) -> set[str]:
    """The ids of source files that asset URLs in the closure's text and JSON columns name (the source has them).

    ``closure``: the move's :class:`~cairn_migrate.content.closure.Closure`.

    Read through the conditions the closure found its rows by where it knows them (a root's filter, a child's
    foreign key into it: a scan, 0.27 s for 300 000 rows where key lists took 0.77), else in key batches as
    large as the closure's lookups; only the text/JSON columns of the rows that may name an asset
    (:func:`_may_name_asset`: the source database skips the rest, most rows of most moves, without sending
    them).  The caller adds the files to the closure so their rows and bytes move with the rows whose text
    shows them.
    """
    from . import keys
    from .closure import BATCH, FILES, lookup_size

    size = lookup_size(src)  # keys per scan: the rows sent back are only those that may name an asset
    found: set[str] = set()
    for name in closure.rows:
        if name.startswith("directus_") or name not in graph.keys:
            continue
        kinds = kinds_of(name)
        columns = [n for n, kind in kinds.items() if kind in TEXT_TYPES or kind == JSON_TYPE]
        if not columns:
            continue
        for where in closure.scans(src, name, size):
            query = sa.select(*[sa.column(c) for c in columns]).select_from(sa.table(name)).where(
                where, sa.or_(*[_may_name_asset(c, kinds[c], src.vendor) for c in columns]))
            # streamed: a condition's scan may answer every row of a table (each body naming an asset)
            for values in conn.execute(query.execution_options(yield_per=BATCH)):
                for column, value in zip(columns, values):
                    if value is not None:
                        if isinstance(value, (bytes, bytearray)):
                            continue  # never a regex over binary
                        found |= urls.asset_ids(value, kinds[column])
    if not found:
        return set()
    existing: set[str] = set()
    ids = sorted(found)
    for start in range(0, len(ids), BATCH):
        query = sa.select(sa.column("id")).select_from(sa.table(FILES)).where(
            keys.in_(src, FILES, "id", ids[start:start + BATCH]))
        existing |= {str(v).lower() for v in conn.execute(query).scalars()}
    return existing
