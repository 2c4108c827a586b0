"""Storage locations on the object-store emulators started by ``scripts/servers start``.

Plain functions (``s3_config()``, ``gcs_config()``, ``azure_config()``) build a
:class:`LocationConfig` on a fresh random bucket/container; the fixtures wrap
them, check the server answers (skip, or fail under ``CI=true``) and remove the
buckets afterwards.  Load as a plugin from ``tests/conftest.py`` with
``pytest_plugins = ["storage_servers"]`` or import the fixtures by name.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cairn_migrate.instance.instance import LocationConfig
from cairn_migrate.instance.storage import Location, open_location

S3_ENDPOINT = os.environ.get("CAIRN_TEST_S3_ENDPOINT", "http://127.0.0.1:8333")
S3_KEY = os.environ.get("CAIRN_TEST_S3_KEY", "cairn-test-key")
S3_SECRET = os.environ.get("CAIRN_TEST_S3_SECRET", "cairn-test-secret")
S3_REGION = os.environ.get("CAIRN_TEST_S3_REGION", "us-east-1")
GCS_ENDPOINT = os.environ.get("CAIRN_TEST_GCS_ENDPOINT", "http://127.0.0.1:4443")
AZURE_ENDPOINT = os.environ.get("CAIRN_TEST_AZURE_ENDPOINT", "http://127.0.0.1:10000/devstoreaccount1")
AZURE_ACCOUNT = os.environ.get("CAIRN_TEST_AZURE_ACCOUNT", "devstoreaccount1")
# Azurite's published well-known development key (not a secret).
AZURE_KEY = os.environ.get(
    "CAIRN_TEST_AZURE_KEY",
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
)

STORAGE_DRIVERS = ("local", "s3", "gcs", "azure")
_SERVER_NAMES = {"s3": ("SeaweedFS S3", S3_ENDPOINT), "gcs": ("fake-gcs-server", GCS_ENDPOINT),
                 "azure": ("Azurite", AZURE_ENDPOINT)}


def unique_bucket(prefix: str = "cairn") -> str:
    """A fresh DNS-safe bucket/container name (3-63 chars, lowercase)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def storage_server_missing(driver: str) -> str | None:
    """``None`` when the emulator for ``driver`` accepts TCP connections, else the reason."""
    if driver == "local":
        return None
    name, endpoint = _SERVER_NAMES[driver]
    parts = urlsplit(endpoint)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=3):
            return None
    except OSError as exc:
        return f"{name} at {endpoint}: {exc.strerror or exc}"


def require_storage_server(driver: str) -> None:
    """Skip the test (fail under ``CI=true``) when the ``driver`` emulator does not answer."""
    reason = storage_server_missing(driver)
    if driver != "local" and not reason:
        from servers import record

        record(_SERVER_NAMES[driver][0])
    if reason:
        message = f"{reason}; start it with: scripts/servers start"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def local_config(root: Path, name: str = "local", **options: Any) -> LocationConfig:
    root.mkdir(parents=True, exist_ok=True)
    return LocationConfig(name=name, driver="local", options={"root": str(root), **options})


def s3_config(bucket: str | None = None, name: str = "s3", **options: Any) -> LocationConfig:
    opts = {"key": S3_KEY, "secret": S3_SECRET, "bucket": bucket or unique_bucket(), "region": S3_REGION,
            "endpoint": S3_ENDPOINT, "forcePathStyle": True}
    opts.update(options)
    return LocationConfig(name=name, driver="s3", options=opts)


def gcs_config(bucket: str | None = None, name: str = "gcs", **options: Any) -> LocationConfig:
    opts = {"bucket": bucket or unique_bucket(), "apiEndpoint": GCS_ENDPOINT, "projectId": "cairn-test"}
    opts.update(options)
    return LocationConfig(name=name, driver="gcs", options=opts)


def azure_config(container: str | None = None, name: str = "azure", **options: Any) -> LocationConfig:
    opts = {"containerName": container or unique_bucket(), "accountName": AZURE_ACCOUNT, "accountKey": AZURE_KEY,
            "endpoint": AZURE_ENDPOINT}
    opts.update(options)
    return LocationConfig(name=name, driver="azure", options=opts)


def create_container(location: Location) -> None:
    """Create the location's bucket/container (tests only: the sidecar never creates buckets)."""
    if location.container is not None:
        location.fs.mkdir(location.container)


def remove_container(location: Location) -> None:
    """Delete the bucket/container and everything in it; errors are ignored (best-effort cleanup)."""
    if location.container is None:
        return
    try:
        location.fs.rm(location.container, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must never mask the test result
        pass


LocationFactory = Callable[..., Location]


@pytest.fixture
def make_location(tmp_path: Path) -> Iterator[LocationFactory]:
    """``make_location(driver, *, name=None, create=True, **options) -> Location``.

    Each call gets a new random bucket/container (or a new folder under
    ``tmp_path`` for local) and skips/fails when the server is down.  Options
    override the defaults, e.g. ``root="/uploads/"``.  Buckets are removed at
    teardown.
    """
    made: list[Location] = []

    def factory(driver: str, *, name: str | None = None, create: bool = True, **options: Any) -> Location:
        require_storage_server(driver)
        name = name or driver
        if driver == "local":
            root = Path(options.pop("root", tmp_path / f"{name}-{uuid.uuid4().hex[:8]}"))
            config = local_config(root, name=name, **options)
        else:
            build = {"s3": s3_config, "gcs": gcs_config, "azure": azure_config}[driver]
            config = build(name=name, **options)
        location = open_location(config)
        if create:
            create_container(location)
        made.append(location)
        return location

    yield factory
    for location in made:
        remove_container(location)


def _driver_params() -> list[Any]:
    return [pytest.param(d, id=d, marks=() if d == "local" else getattr(pytest.mark, d)) for d in STORAGE_DRIVERS]


@pytest.fixture(params=_driver_params())
def storage_driver(request: pytest.FixtureRequest) -> str:
    """Each of ``local``, ``s3``, ``gcs``, ``azure`` in turn (with the matching marker)."""
    return request.param


@pytest.fixture
def any_location(storage_driver: str, make_location: LocationFactory) -> Location:
    """A fresh, empty location on each backend in turn."""
    return make_location(storage_driver)


@pytest.fixture
def local_location(make_location: LocationFactory) -> Location:
    return make_location("local")


@pytest.fixture
def s3_location(make_location: LocationFactory) -> Location:
    return make_location("s3")


@pytest.fixture
def gcs_location(make_location: LocationFactory) -> Location:
    return make_location("gcs")


@pytest.fixture
def azure_location(make_location: LocationFactory) -> Location:
    return make_location("azure")


__all__ = [
    "STORAGE_DRIVERS", "any_location", "azure_config", "azure_location", "create_container", "gcs_config",
    "gcs_location", "local_config", "local_location", "make_location", "remove_container", "require_storage_server",
    "s3_config", "s3_location", "storage_driver", "storage_server_missing", "unique_bucket",
]
