"""Proof, through the instance's own HTTP, that its hook enforces a freeze before an export captures.

A freeze record in the state store holds nothing by itself: the instance's hook
must be installed and loaded, reach a sidecar that reads the same state store,
and share the secret.  So before capturing, the export asks the instance
(``PUBLIC_URL``, or the URL the user gives)::

    GET <instance>/migrate/freeze-proof/<freeze id>     signed with the shared secret

The hook (``admin_module/api/hook.js``) checks the signature, asks its sidecar
afresh, and answers 200 only when it sees this very freeze, signing its answer
(method ``RESPONSE``, same scheme) so that nothing but the hook holding the
secret can vouch for it.  The export then waits ``wait_ms`` (how long an answer
asked before the freeze may still be acted on) plus :data:`GRACE` for writes in
flight, and only then captures.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import FreezeNotEnforced, Unauthorized
from ..instance import timeouts
from ..instance.instance import Instance
from ..service.signature import shared_secret, sign, verify

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

PROOF_PATH = "/migrate/freeze-proof/{freeze_id}"
#: Time for a write that passed the hook's check just before the freeze to commit.
GRACE = 0.5
#: The longest wait a hook may ask for (a bound on a forged or misconfigured answer).
MAX_WAIT_MS = 30_000
_SKIP_HINT = "or export with --no-freeze-guarantee to capture without the guarantee"


def instance_url(instance: Instance, url: str | None = None) -> str:
    """The instance's base URL: ``url`` when given, else its ``PUBLIC_URL``.

    :raises FreezeNotEnforced: neither is an absolute http(s) URL.
    """
    base = (url or instance.public_url).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise FreezeNotEnforced(
            f"--freeze needs the instance's URL to prove the freeze, and PUBLIC_URL is {instance.public_url!r}",
            hint=f"pass --instance-url http://HOST:PORT (or set an absolute PUBLIC_URL), {_SKIP_HINT}",
        )
    return base


def _refusal(response: requests.Response, base: str) -> FreezeNotEnforced:
    """Why the instance did not vouch for the freeze, from its (unsigned, so untrusted) answer."""
    try:
        error = (response.json().get("errors") or [{}])[0]
    except (ValueError, AttributeError, IndexError):
        error = {}
    code = (error.get("extensions") or {}).get("code")
    if code == "INVALID_SIGNATURE":
        return FreezeNotEnforced(
            f"The instance's cairn-migrate hook at {base} does not accept this instance's shared secret",
            hint=f"re-run install-extension with this .env and restart the instance, {_SKIP_HINT}",
        )
    return FreezeNotEnforced(
        f"The instance at {base} has no cairn-migrate hook answering freeze proofs (HTTP {response.status_code})",
        hint=f"run install-extension, restart the instance, and check --instance-url, {_SKIP_HINT}",
    )


def _not_seen(answer: dict[str, Any], base: str) -> FreezeNotEnforced:
    seen = answer.get("seen") or {}
    sidecar = answer.get("sidecar_url") or "its sidecar"
    if seen.get("unreachable"):
        return FreezeNotEnforced(
            f"The instance's hook cannot reach its sidecar at {sidecar} ({seen['unreachable']})",
            hint=f"start cairn-migrate serve there (or fix --sidecar-url with install-extension), {_SKIP_HINT}",
        )
    return FreezeNotEnforced(
        f"The instance's hook at {base} does not see this freeze: its sidecar {sidecar} uses another state store",
        hint=f"export with the CAIRN_MIGRATE_STATE_URL of that sidecar, or through it (POST /migrate/export), {_SKIP_HINT}",
    )


def ask_hook(instance: Instance, freeze_id: str, url: str | None = None) -> dict[str, Any]:
    """Ask the instance's hook whether it enforces freeze ``freeze_id``; its verified answer.

    :raises FreezeNotEnforced: not installed, instance down, wrong secret, another state store,
        or an answer not signed by the hook.
    """
    base = instance_url(instance, url)
    secret = shared_secret(instance)
    if not secret:
        raise FreezeNotEnforced(
            f"--freeze needs the cairn-migrate extension in the instance, and {instance.extensions_path} has none",
            hint=f"run install-extension and restart the instance, {_SKIP_HINT}",
        )
    path = PROOF_PATH.format(freeze_id=freeze_id)
    import requests  # here, not at the top: only an export with --freeze speaks HTTP (start-up, tests/test_startup.py)

    # A short answer, like verify's /server/ping: CAIRN_MIGRATE_CONNECT_TIMEOUT bounds connecting and the answer.
    connect = timeouts.connect_timeout()
    try:
        response = requests.get(base + path, headers=sign(secret, "GET", path, b""), timeout=(connect, connect))
    except requests.RequestException as exc:
        raise FreezeNotEnforced(
            f"The instance did not answer at {base} ({type(exc).__name__})",
            hint=f"start it, or pass --instance-url with the URL the sidecar can reach it at ({timeouts.hint(timeouts.CONNECT_ENV)}), {_SKIP_HINT}",
        ) from exc
    try:
        verify(secret, "RESPONSE", path, response.content, response.headers)
    except Unauthorized:
        raise _refusal(response, base) from None
    answer = json.loads(response.content)
    if response.status_code != 200 or answer.get("enforced") is not True or answer.get("freeze_id") != freeze_id:
        raise _not_seen(answer, base)
    return answer


def prove_enforced(instance: Instance, freeze: dict[str, Any], url: str | None = None, *, guarantee: bool = True) -> dict[str, Any]:
    """Prove the hook enforces ``freeze``, then wait out what it may have cached; the proof for the report.

    Without ``guarantee`` a failed proof is a warning, not an error: the capture goes on.

    :raises FreezeNotEnforced: the proof failed and ``guarantee`` is set.
    """
    try:
        answer = ask_hook(instance, freeze["id"], url)
    except FreezeNotEnforced as exc:
        if guarantee:
            raise
        warning = f"the freeze is not proven to hold writes: {exc.message}; the bundle may miss writes made while capturing"
        log.warning(warning)
        return {"guaranteed": False, "warning": warning}
    wait_ms = min(int(answer.get("wait_ms") or 0), MAX_WAIT_MS)
    time.sleep(wait_ms / 1000 + GRACE)
    return {"guaranteed": True, "instance_url": instance_url(instance, url), "waited_ms": wait_ms + int(GRACE * 1000)}
