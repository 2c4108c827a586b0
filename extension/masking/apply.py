"""Applying a profile to rows: :func:`mask_row` (one row as a mapping) and :func:`row_masker` (the
export's row stream, rows as lists in a table's column order).

A :class:`MaskProfile` is a profile bound to its key (from the salt) and the users it keeps.  The key
is ``SHA-256`` of the user's salt, or, without one, of the profile's rules and the instance's
``SECRET`` (a salt derived from a public profile alone would let anyone holding the bundle test
guesses of the real values against the fakes; ``SECRET`` never travels in a bundle).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .fakers import EMAIL_DOMAIN, FAKERS, VERSION, canonical, digest, hash_hex
from .profiles import ColumnInfo, Profile, ProfileError

USERS = "directus_users"
REVISIONS = "directus_revisions"


@dataclass
class MaskProfile:
    """A profile ready to mask: its rules, its key, the users it keeps and the columns it writes."""

    profile: Profile
    key: bytes = field(repr=False)
    salt: str
    keep_users: frozenset[str] = frozenset()
    columns: Mapping[str, Mapping[str, ColumnInfo]] = field(default_factory=dict)
    #: The kept users' emails (lower case) seen so far in ``directus_users``.
    kept: set[str] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        """What a masked bundle's manifest records (never the salt or the key)."""
        return {**self.profile.describe(), "salt": self.salt, "fakers_version": VERSION,
                "kept_users": len(self.keep_users),
                "revisions": "data and delta masked with their collection's rules (emptied for a dropped one)"}


def bind(profile: Profile, *, salt: str | None = None, secret: str | None = None, keep_users: Iterable[str] = (),
         columns: Mapping[str, Mapping[str, ColumnInfo]] | None = None) -> MaskProfile:
    """Bind ``profile`` to a key: ``salt`` if given, else derived from the profile and ``secret``.

    :param secret: the instance's ``SECRET`` (mixed into a derived key; None: the profile alone).
    :param keep_users: emails of users whose ``directus_users`` row stays as it is (they can log in).
    :param columns: :func:`~cairn_migrate.masking.profiles.check_against`'s columns (lengths, unique indexes).
    """
    if salt is not None and not salt:
        raise ProfileError("--mask-salt is empty", hint="pass a non-empty salt, or leave it out for one derived "
                                                          "from the profile and the instance's SECRET")
    if salt:
        key = hashlib.sha256(b"cairn-migrate mask key\0given\0" + salt.encode("utf-8")).digest()
        source = "given"
    else:
        key = hashlib.sha256(b"cairn-migrate mask key\0derived\0" + profile.sha256.encode() + b"\0"
                             + (secret or "").encode("utf-8")).digest()
        source = "derived from the profile and the instance's SECRET" if secret else \
            "derived from the profile alone (the instance sets no SECRET): guessable, pass --mask-salt"
    keep = frozenset(email.strip().lower() for email in keep_users if email and email.strip())
    return MaskProfile(profile, key, source, keep, columns or {})


def mask_value(mp: MaskProfile, masker: str, value: Any, column: ColumnInfo | None = None) -> Any:
    """One value through one masker.  NULL stays NULL except under ``static:``."""
    if masker.startswith("static:"):
        return masker[len("static:"):]
    if value is None or masker == "keep":
        return value
    if masker == "null":
        return None
    original = value if isinstance(value, str) else canonical(value).decode("utf-8")
    seed = digest(mp.key, value)
    fake = FAKERS[masker](seed, original)
    limit = column.length if column is not None else None
    if limit and len(fake) > limit:
        if masker == "email":
            fake = f"{hash_hex(seed)[:max(8, limit - len(EMAIL_DOMAIN) - 1)]}@{EMAIL_DOMAIN}"
        fake = fake[:limit]
    return fake


def _mask_json(mp: MaskProfile, collection: Any, value: Any) -> Any:
    """A revision's ``data``/``delta`` (JSON text or parsed) masked with ``collection``'s rules."""
    if value is None or not isinstance(collection, str):
        return value
    rules = mp.profile.rules(collection)
    if rules is None:
        return None  # the rows are dropped: so are their old values
    if not rules:
        return value
    parsed = value
    if isinstance(value, (str, bytes, bytearray)):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None  # not JSON: nothing to mask field by field, and it may hold old values
    if not isinstance(parsed, dict):
        return value
    masked = _mask_fields(mp, collection, rules, parsed)
    if isinstance(value, (str, bytes, bytearray)):
        return json.dumps(masked, ensure_ascii=False, separators=(",", ":"))
    return masked


def _mask_fields(mp: MaskProfile, collection: str, rules: Mapping[str, str], row: Mapping[str, Any]) -> dict[str, Any]:
    columns = mp.columns.get(collection, {})
    out = dict(row)
    for name, masker in rules.items():
        if name in out:
            out[name] = mask_value(mp, masker, out[name], columns.get(name))
    return out


def _kept(mp: MaskProfile, collection: str, email: Any) -> bool:
    if collection != USERS or not mp.keep_users or not isinstance(email, str):
        return False
    if email.lower() in mp.keep_users:
        mp.kept.add(email.lower())
        return True
    return False


def mask_row(profile: MaskProfile, collection: str, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """``row`` of ``collection`` masked: a new dict, or None when the profile drops the collection's rows.

    Only the fields present in ``row`` are touched (a partial row is fine).  A kept user's
    ``directus_users`` row comes back unchanged; a ``directus_revisions`` row gets its ``data`` and
    ``delta`` masked with the rules of the revision's own collection.
    """
    rules = profile.profile.rules(collection)
    if rules is None:
        return None
    if _kept(profile, collection, row.get("email")):
        return dict(row)
    out = _mask_fields(profile, collection, rules, row) if rules else dict(row)
    if collection == REVISIONS and "collection" in out:
        for name in ("data", "delta"):
            if name in out:
                out[name] = _mask_json(profile, out["collection"], out[name])
    return out


RowMasker = Callable[[list[Any]], "list[Any] | None"]


def row_masker(mp: MaskProfile, collection: str, names: list[str]) -> RowMasker | None:
    """A function masking one row of ``collection`` given as a list in ``names``' order (None: nothing to do).

    It returns None for a row to leave out, and refuses (:class:`ProfileError`) a fake that repeats
    in a column with a unique index (two distinct values met the same fake).
    """
    rules = mp.profile.rules(collection)
    if rules is None:
        return lambda values: None
    columns = mp.columns.get(collection, {})
    todo = [(names.index(name), masker, columns.get(name)) for name, masker in rules.items() if name in names]
    revisions = collection == REVISIONS and "collection" in names
    if not todo and not revisions:
        return None
    email_at = names.index("email") if collection == USERS and "email" in names else None
    json_at = [names.index(n) for n in ("data", "delta") if n in names] if revisions else []
    collection_at = names.index("collection") if revisions else -1
    unique = {i: set() for i, masker, column in todo
              if column is not None and column.unique and masker not in ("null", "keep")}

    def mask(values: list[Any]) -> list[Any] | None:
        if email_at is not None and _kept(mp, collection, values[email_at]):
            return values
        for i, masker, column in todo:
            values[i] = mask_value(mp, masker, values[i], column)
            if i in unique and values[i] is not None:
                if values[i] in unique[i]:
                    raise ProfileError(
                        f"masker {masker!r} gave the same value twice in {collection}.{names[i]}, which has a unique "
                        "index", hint=f"mask {collection}.{names[i]} with email or hash (unique for distinct values)")
                unique[i].add(values[i])
        for i in json_at:
            values[i] = _mask_json(mp, values[collection_at], values[i])
        return values

    return mask
