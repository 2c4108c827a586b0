"""Masking profiles: per collection and field a masker, from a YAML file or built in.

A profile file::

    name: authors-too          # optional (default: the file's name)
    extends: pii-basic         # optional: start from a built-in profile
    collections:
      authors:
        name: name
        email: email
        bio: text
      directus_sessions: drop  # export no rows of it

Maskers: ``email``, ``name``, ``first_name``, ``last_name``, ``phone``, ``text`` (lorem words of the
value's length), ``hash`` (the value's HMAC in hex), ``null``, ``keep`` and ``static:VALUE``.  A
collection's revisions (``directus_revisions.data``/``delta``) are masked with the same rules, and
emptied for a dropped collection: they carry the rows' old values.

A profile is validated twice: its shape when loaded (:func:`load`), then against the instance it is
applied to (:func:`check_against`): every collection and field must exist there and suit its masker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ..errors import InvalidInput
from .fakers import FAKERS

#: Every masker's name (``static:VALUE`` is written with its value).
MASKERS = (*FAKERS, "null", "keep", "static:VALUE")
#: Maskers that write a string made from the value (so the column must hold text).
TEXT_MASKERS = frozenset(FAKERS)
#: Neutral column types (bundle/table_schema) a text masker may write.
TEXT_TYPES = frozenset({"string", "text"})
DROP = "drop"

SHAPE = ("a profile is `collections: {COLLECTION: {FIELD: MASKER}}` (or `COLLECTION: drop`), optionally with "
         "`name:` and `extends: pii-basic`; maskers: " + ", ".join(MASKERS))


class ProfileError(InvalidInput):
    """A masking profile that cannot be used: its message names the bad key, its hint the fix."""


#: The built-in profiles: name → collections.  ``pii-basic`` is documented in README ("Masking").
BUILTIN: dict[str, dict[str, Any]] = {
    "pii-basic": {
        "directus_users": {
            "first_name": "first_name",
            "last_name": "last_name",
            "email": "email",
            "location": "text",
            "title": "text",
            "description": "text",
            "avatar": "null",
            # NULL: nobody logs in with a password until one is set again (`cairncms users passwd`, or
            # the password reset mail): no credential of a real person, and none every clone shares.
            "password": "null",
            "token": "null",
            "tfa_secret": "null",
            "auth_data": "null",
            "external_identifier": "hash",
        },
        # Refresh tokens (plain text) with their IPs: a clone starts with nobody logged in.
        "directus_sessions": DROP,
        "directus_activity": {"ip": "null", "user_agent": "null", "comment": "text"},
        "directus_notifications": {"subject": "text", "message": "text"},
    },
}
BUILTIN_NAMES = tuple(BUILTIN)


@dataclass(frozen=True)
class Profile:
    """A validated profile: ``collections`` maps a collection to its field → masker rules, or None (drop)."""

    name: str
    collections: Mapping[str, Mapping[str, str] | None]
    origin: str = "built-in"
    extends: str | None = None

    @property
    def sha256(self) -> str:
        """A digest of the rules (not the name): what the default salt is derived from."""
        rules = {c: (dict(r) if r is not None else DROP) for c, r in self.collections.items()}
        return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()

    def rules(self, collection: str) -> Mapping[str, str] | None:
        """The field → masker rules of ``collection`` (empty: keep it as is; None: drop its rows)."""
        if collection not in self.collections:
            return {}
        return self.collections[collection]

    def describe(self) -> dict[str, Any]:
        """What a manifest records: the name, where it came from, the digest and the rules."""
        return {"name": self.name, "origin": self.origin, **({"extends": self.extends} if self.extends else {}),
                "sha256": self.sha256,
                "collections": {c: (dict(r) if r is not None else DROP) for c, r in sorted(self.collections.items())}}


# ----------------------------------------------------------------------------------------- shape
class _Masker(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if text in FAKERS or text in ("null", "keep") or text.startswith("static:"):
            return text
        raise ValidationError(f"unknown masker {text!r}; use one of {', '.join(MASKERS)}")


class _Collection(fields.Field):
    """``drop``, or a mapping of field → masker."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str] | None:
        if value == DROP:
            return None
        if not isinstance(value, Mapping):
            raise ValidationError("must be `drop` or a mapping of FIELD: MASKER")
        rules, errors = {}, {}
        for key, masker in value.items():
            if not isinstance(key, str) or not key:
                errors[str(key)] = ["a field name must be a non-empty string"]
                continue
            try:
                rules[key] = _Masker().deserialize(masker)
            except ValidationError as exc:
                errors[key] = exc.messages
        if errors:
            raise ValidationError(errors)
        if not rules:
            raise ValidationError("names no field; write `drop` to leave out its rows, or remove the collection")
        return rules


class ProfileSchema(Schema):
    """The shape of a profile file (unknown keys are refused, by name)."""

    class Meta:
        unknown = RAISE

    name = fields.String(validate=validate.Length(min=1, max=100))
    extends = fields.String(validate=validate.OneOf(BUILTIN_NAMES, error="not a built-in profile; use one of {choices}"))
    collections = fields.Dict(keys=fields.String(validate=validate.Length(min=1)), values=_Collection(), required=True)


def _flatten(messages: Any, path: str = "") -> list[str]:
    """marshmallow's nested messages → ``collections.authors.nmae: unknown masker …`` lines."""
    if isinstance(messages, Mapping):
        lines = []
        for key, inner in messages.items():
            if key in ("value", "key") and path.startswith("collections"):
                lines += _flatten(inner, path)  # fields.Dict's own nesting: the key is already in the path
            else:
                lines += _flatten(inner, f"{path}.{key}" if path else str(key))
        return lines
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{path}: {' '.join(messages)}"]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, path)]
    return [f"{path}: {messages}"]


def parse(data: Any, *, origin: str, default_name: str) -> Profile:
    """A profile from its parsed YAML ``data``.

    :raises ProfileError: the shape is wrong (the message names each bad key).
    """
    if not isinstance(data, Mapping):
        raise ProfileError(f"masking profile {origin} is not a mapping", hint=SHAPE)
    try:
        loaded = ProfileSchema().load(dict(data))
    except ValidationError as exc:
        problems = "; ".join(_flatten(exc.normalized_messages()))
        raise ProfileError(f"masking profile {origin}: {problems}", hint=SHAPE) from None
    collections: dict[str, Mapping[str, str] | None] = {}
    if loaded.get("extends"):
        collections.update(_builtin_rules(loaded["extends"]))
    for collection, rules in loaded["collections"].items():
        base = collections.get(collection)
        collections[collection] = None if rules is None else {**(base or {}), **rules}
    return Profile(name=loaded.get("name") or default_name, collections=collections, origin=origin,
                   extends=loaded.get("extends"))


def _builtin_rules(name: str) -> dict[str, Mapping[str, str] | None]:
    return {c: (None if r == DROP else dict(r)) for c, r in BUILTIN[name].items()}


def load(spec: str | Path) -> Profile:
    """A built-in profile by name, or a profile from a YAML file.

    :raises ProfileError: no such built-in profile or file, unreadable YAML, or a bad shape.
    """
    if isinstance(spec, str) and spec in BUILTIN:
        return Profile(name=spec, collections=_builtin_rules(spec))
    path = Path(spec)
    if not path.is_file():
        raise ProfileError(f"no masking profile {str(spec)!r}: neither a built-in profile nor a file",
                           hint=f"use a built-in profile ({', '.join(BUILTIN_NAMES)}) or the path of a YAML profile")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProfileError(f"masking profile {path.name} is not readable YAML: {problem}", hint=SHAPE) from None
    return parse(data, origin=path.name, default_name=path.stem)


# ------------------------------------------------------------------------------ against an instance
@dataclass(frozen=True)
class ColumnInfo:
    """What :func:`check_against` needs of a column: its neutral type, whether NULL fits, its length."""

    type: str
    nullable: bool = True
    length: int | None = None
    unique: bool = False


@dataclass(frozen=True)
class Checked:
    """The columns a profile's rules touch, per collection (what the masking reads while it writes)."""

    columns: Mapping[str, Mapping[str, ColumnInfo]] = field(default_factory=dict)


def check_against(profile: Profile, tables: Mapping[str, Mapping[str, ColumnInfo]]) -> Checked:
    """Refuse a profile that names a collection or field ``tables`` lacks, or a masker its column cannot hold.

    :param tables: collection → field → column, as the instance has them.
    :raises ProfileError: one message naming every problem.
    """
    problems: list[str] = []
    for collection, rules in sorted(profile.collections.items()):
        if collection not in tables:
            problems.append(f"collection {collection!r} does not exist in this instance")
            continue
        for name, masker in sorted((rules or {}).items()):
            column = tables[collection].get(name)
            if column is None:
                problems.append(f"field {collection}.{name} does not exist in this instance")
            elif masker in TEXT_MASKERS and column.type not in TEXT_TYPES:
                problems.append(f"{collection}.{name} is a {column.type} column: masker {masker!r} writes text "
                                "(use null, keep or static:VALUE)")
            elif masker == "null" and not column.nullable:
                problems.append(f"{collection}.{name} is NOT NULL: masker 'null' cannot apply (use static:VALUE or text)")
    if problems:
        raise ProfileError(f"masking profile {profile.name} does not fit this instance: " + "; ".join(problems),
                           hint="remove or rename those entries in the profile (collections and fields as the "
                                "database names them)")
    return Checked({c: {n: tables[c][n] for n in (rules or {})} for c, rules in profile.collections.items()})
