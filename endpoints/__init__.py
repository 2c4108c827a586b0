"""The ``/migrate/*`` JSON API: one blueprint, one module per resource.

Every route needs an admin of the instance (:func:`.auth.admin_required`)
except ``GET /migrate/health``.  Views parse, call one function and dump.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("migrate", __name__, url_prefix="/migrate")



def blueprint() -> Blueprint:
    """``bp`` with every view on it: the view modules register their routes when imported.

    Imported here, on first use, rather than at the bottom of this module, so that
    no view module is half-imported when it imports ``bp`` (no import circle).
    """
    from . import bundles, events, files, freeze, health, imports, inspect, jobs, openapi, ops, paths, syncs  # noqa: F401

    return bp
