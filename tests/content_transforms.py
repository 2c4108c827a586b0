"""Row functions for ``content move --transform`` in tests (imported by their import string)."""

from __future__ import annotations

from typing import Any, Mapping


def shout_and_skip(collection: str, row: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any] | None:
    """Upper-case articles' titles, tag the SEO title with the target, and leave out unapproved comments."""
    if collection == "articles":
        row["title"] = str(row["title"]).upper()
    if collection == "article_comments" and not row.get("approved"):
        return None
    return row


def change_key(collection: str, row: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any] | None:
    """A bad transform: it changes the primary key."""
    if collection == "articles":
        row["id"] = "00000000-0000-4000-8000-000000000000"
    return row


def add_field(collection: str, row: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any] | None:
    """A bad transform: it returns a field the collection does not have."""
    return {**row, "no_such_field": 1}
