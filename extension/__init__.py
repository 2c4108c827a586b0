"""cairn-migrate: the migration sidecar for CairnCMS."""

__version__ = "0.1.0"
