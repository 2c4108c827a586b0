"""Defaults of the file operations, in one place for every shell and the core functions.

The registry's parameter schemas (``operations.py``), the CLI options, the
alias routes' request bodies and the core functions' keyword defaults
(``file_rows.py``, ``storage_move.py``) all read them here, a module that
imports nothing, so no layer imports one above it for a number.
"""

from __future__ import annotations

#: Concurrent storage requests of the file operations (HEAD requests of a check, copies of a move).
DEFAULT_WORKERS = 16
#: Problem examples a files check keeps per kind.
DEFAULT_LIMIT = 1000
