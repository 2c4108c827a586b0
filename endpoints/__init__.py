"""The ``/migrate/*`` JSON API: one blueprint, one module per resource.

Every route needs an admin of the instance (:func:`.auth.admin_required`)
except ``GET /migrate/health``.  Views parse, call one function and dump.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("migrate", __name__, url_prefix="/migrate")

# The view modules register their routes on ``bp`` when imported.
from . import bundles, events, files, freeze, health, imports, inspect, jobs, openapi, ops  # noqa: E402,F401
