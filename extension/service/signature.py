"""The shared secret between the instance's hook and the sidecar, and the HMAC signature made with it.

``install-extension`` generates the secret once and writes it, with the sidecar's
URL, to ``<EXTENSIONS_PATH>/.cairn-migrate.json``; the hook reads it there and the
sidecar reads the same file through the instance's ``.env``.  A signed request
carries::

    X-Cairn-Migrate-Timestamp: <unix seconds>
    X-Cairn-Migrate-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>\\n<METHOD>\\n<path>\\n" + body)>

and is accepted within :data:`MAX_SKEW` seconds of the sidecar's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from ..errors import Unauthorized
from ..instance.instance import Instance

CONFIG_NAME = ".cairn-migrate.json"
TIMESTAMP_HEADER = "X-Cairn-Migrate-Timestamp"
SIGNATURE_HEADER = "X-Cairn-Migrate-Signature"
#: How far a signed request's timestamp may be from now, in seconds.
MAX_SKEW = 300

_HINT = "the instance's cairn-migrate hook signs this request; re-run install-extension if the secret changed"


def config_path(instance: Instance) -> Path:
    """Where ``install-extension`` keeps the extension's config: ``<EXTENSIONS_PATH>/.cairn-migrate.json``."""
    return instance.extensions_path / CONFIG_NAME


def read_extension_config(instance: Instance) -> dict[str, Any] | None:
    """The installed extension's config, or ``None`` when it is not installed (or unreadable)."""
    try:
        data = json.loads(config_path(instance).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def shared_secret(instance: Instance) -> str | None:
    """The secret the hook signs with, or ``None`` when the extension is not installed."""
    config = read_extension_config(instance)
    secret = config.get("secret") if config else None
    return str(secret) if secret else None


def sign(secret: str, method: str, path: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two signature headers for a request (what the hook's ``signedHeaders`` computes)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"{ts}\n{method.upper()}\n{path}\n".encode() + body, hashlib.sha256)
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"sha256={mac.hexdigest()}"}


def is_signed(headers: Any) -> bool:
    """Whether the request carries a signature at all (then it must be a valid one)."""
    return bool(headers.get(SIGNATURE_HEADER))


def verify(secret: str | None, method: str, path: str, body: bytes, headers: Any, now: float | None = None) -> None:
    """Check a signed request.

    :raises Unauthorized: no secret configured, no or bad signature, or a stale timestamp.
    """
    if not secret:
        raise Unauthorized(
            "This route needs a signed request, and the extension is not installed on this instance",
            hint="run cairn-migrate install-extension",
        )
    signature = str(headers.get(SIGNATURE_HEADER) or "")
    timestamp = str(headers.get(TIMESTAMP_HEADER) or "")
    if not signature or not timestamp.isdigit():
        raise Unauthorized("The request is not signed", hint=_HINT)
    if abs((time.time() if now is None else now) - int(timestamp)) > MAX_SKEW:
        raise Unauthorized("The request's signature has expired", hint="check the clocks of the instance and the sidecar")
    expected = sign(secret, method, path, body, int(timestamp))[SIGNATURE_HEADER]
    if not hmac.compare_digest(expected, signature):
        raise Unauthorized("The request's signature is not valid", hint=_HINT)
