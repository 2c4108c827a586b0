"""A Directus-style filter (``{"status": {"_eq": "published"}}``) compiled to a SQLAlchemy condition.

Only the collection's own columns, and only the operators a content move needs
(``_eq _neq _in _nin _null _nnull _gt _gte _lt _lte _contains`` and the logical
``_and``/``_or``).  Values are always bound parameters, never text put into SQL.
The caller says how a field's column and values look to the vendor's driver
(:func:`cairn_migrate.content.keys.column` / :func:`~cairn_migrate.content.keys.value`:
typed on PostgreSQL, whose driver casts each parameter; as stored elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidInput

_HINT = ('a filter is a JSON object such as {"status": {"_eq": "published"}} or '
         '{"_or": [{"id": {"_in": [1, 2]}}, {"title": {"_contains": "CMS"}}]}')

_BINARY: dict[str, Callable[[sa.ColumnClause[Any], Any], sa.ColumnElement[bool]]] = {
    "_eq": lambda c, v: c.is_(None) if v is None else c == v,
    "_neq": lambda c, v: c.is_not(None) if v is None else c != v,
    "_gt": lambda c, v: c > v,
    "_gte": lambda c, v: c >= v,
    "_lt": lambda c, v: c < v,
    "_lte": lambda c, v: c <= v,
    "_contains": lambda c, v: c.contains(str(v), autoescape=True),
}

OPERATORS = (*_BINARY, "_in", "_nin", "_null", "_nnull", "_and", "_or")


def parse(value: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The filter as a dict: a JSON text (the CLI) or an object (HTTP); None or ``{}`` is no filter.

    :raises InvalidInput: not JSON, or not an object.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidInput(f"--filter is not JSON: {exc}", hint=_HINT) from None
    if not isinstance(value, Mapping):
        raise InvalidInput("--filter must be a JSON object", hint=_HINT)
    return dict(value) or None


class _AnyField(Collection[str]):
    """Every name is a field: the filter's shape checked before the collections' columns are known."""

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def check_shape(value: str | Mapping[str, Any] | None) -> None:
    """Refuse a filter that no collection could take (not JSON, an unknown operator, a value of the wrong
    shape) before any work starts: over HTTP a move is a job, and a job that can only fail is no answer.

    :raises InvalidInput: as :func:`parse` and :func:`compile_filter` would, naming the problem.
    """
    compile_filter(parse(value), "the collections", _AnyField())


def compile_filter(spec: Mapping[str, Any] | None, collection: str, columns: Collection[str],
                   column: Callable[[str], sa.ColumnElement[Any]] = sa.column,
                   value: Callable[[str, Any], Any] = lambda name, v: v) -> sa.ColumnElement[bool]:
    """The condition ``spec`` describes on ``collection`` (whose columns are ``columns``).

    :param column: the column expression of a field (typed where the vendor needs it: :func:`.keys.column`).
    :param value: a value as the driver wants it for that field (:func:`.keys.value`).

    :raises InvalidInput: an unknown field or operator, or a value of the wrong shape, named.
    """
    if not spec:
        return sa.true()
    return _node(spec, collection, columns if isinstance(columns, _AnyField) else set(columns), column, value)


def _node(spec: Any, collection: str, columns: set[str], column: Any, value: Any) -> sa.ColumnElement[bool]:
    if not isinstance(spec, Mapping) or not spec:
        raise InvalidInput(f"filter on {collection}: expected a non-empty object, got {json.dumps(spec)}", hint=_HINT)
    parts = []
    for key, given in spec.items():
        if key in ("_and", "_or"):
            if not isinstance(given, list) or not given:
                raise InvalidInput(f"filter on {collection}: {key} takes a non-empty list of filters", hint=_HINT)
            inner = [_node(item, collection, columns, column, value) for item in given]
            parts.append(sa.and_(*inner) if key == "_and" else sa.or_(*inner))
        elif key.startswith("_"):
            raise InvalidInput(f"filter on {collection}: {key} is not a logical operator (only _and, _or)", hint=_HINT)
        else:
            if key not in columns:
                raise InvalidInput(f"filter on {collection}: no field {key!r} (its fields: {', '.join(sorted(columns))})",
                                   hint="filter only on the collection's own columns")
            parts.append(_field(key, given, collection, column(key), lambda v, k=key: value(k, v)))
    return sa.and_(*parts) if len(parts) > 1 else parts[0]


def _field(name: str, ops: Any, collection: str, column: Any, convert: Callable[[Any], Any]) -> sa.ColumnElement[bool]:
    if not isinstance(ops, Mapping) or not ops:
        raise InvalidInput(f"filter on {collection}.{name}: expected an operator object such as {{\"_eq\": ...}}",
                           hint=_HINT)
    parts = []
    for op, value in ops.items():
        if op in _BINARY:
            if isinstance(value, (list, dict)):
                raise InvalidInput(f"filter on {collection}.{name}: {op} takes one value", hint=_HINT)
            parts.append(_BINARY[op](column, value if value is None or op == "_contains" else convert(value)))
        elif op in ("_in", "_nin"):
            if not isinstance(value, list):
                raise InvalidInput(f"filter on {collection}.{name}: {op} takes a list", hint=_HINT)
            if not value:
                parts.append(sa.false() if op == "_in" else sa.true())
            else:
                value = [convert(v) for v in value]
                parts.append(column.in_(value) if op == "_in" else sa.or_(column.not_in(value), column.is_(None)))
        elif op in ("_null", "_nnull"):
            wants_null = bool(value) == (op == "_null")
            parts.append(column.is_(None) if wants_null else column.is_not(None))
        elif not str(op).startswith("_"):  # {"author": {"name": {"_eq": "x"}}}: Directus's relational filter
            raise InvalidInput(f"filter on {collection}.{name}: {name}.{op} is a field of the related collection; "
                               "filters on related collections' fields are not supported (only the collection's "
                               "own columns)",
                               hint=f"filter on the foreign key itself (e.g. {{\"{name}\": {{\"_in\": [...]}}}} with "
                               f"the related rows' keys), or move from the related collection with its own filter "
                               f"(--collection <related> --filter '{{\"{op}\": ...}}'; its related rows come along)")
        else:
            raise InvalidInput(f"filter on {collection}.{name}: unsupported operator {op}",
                               hint=f"supported: {', '.join(OPERATORS)}")
    return sa.and_(*parts) if len(parts) > 1 else parts[0]
