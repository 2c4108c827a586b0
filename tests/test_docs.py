"""The reference pages say what the code does (they are generated; this catches a stale commit)."""

from __future__ import annotations

from pathlib import Path

from cairn_migrate.docgen import cli_markdown, http_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_cli_reference_is_current() -> None:
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == cli_markdown(), "run: python -m cairn_migrate.docgen"


def test_http_reference_is_current() -> None:
    assert (DOCS / "http.md").read_text(encoding="utf-8") == http_markdown(), "run: python -m cairn_migrate.docgen"


def test_architecture_names_every_module() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    root = DOCS.parent
    modules = [p for folder in ("extension", "endpoints", "hooks") for p in (root / folder).rglob("*.py") if p.name != "__init__.py"]
    missing = sorted(str(p.relative_to(root)) for p in modules if p.stem not in text)
    assert not missing, f"docs/architecture.md does not mention: {missing}"
