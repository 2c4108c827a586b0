"""One interface over CairnCMS's storage locations (local, S3, GCS, Azure).

CairnCMS stores a file's bytes at ``(directus_files.storage, filename_disk)``.
This module maps that pair to exactly the object CairnCMS's own storage driver
reads and writes (reference §6.6), so that a migration copies the bytes the
instance will later serve, and nothing else:

* local: ``join(root, join('/', filename_disk))``: ``..`` cannot escape the root;
* s3/gcs/azure: ``normalizePath(join(root, filename_disk))`` inside the bucket
  or container, with the root's leading slash removed and repeated/trailing
  slashes collapsed (``ROOT=/uploads/`` → ``uploads/<filename_disk>``).

Everything runs on fsspec (s3fs, gcsfs, adlfs), so byte streaming, multipart
uploads and server-side copies come from maintained libraries; this module
only owns naming, option mapping and error translation.  Errors leave as
:mod:`cairn_migrate.errors` classes with one-line, secret-free messages that
name the ``STORAGE_<NAME>_*`` setting to fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

# gcsfs probes hierarchical-namespace buckets through an API the emulators and
# most projects lack; turn the experiment off unless the user chose otherwise.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402

from . import timeouts  # noqa: E402
from ..errors import ConfigError, InstanceUnreachable, MigrateError, NotFound, UnsupportedDriver  # noqa: E402
from .instance import LocationConfig  # noqa: E402

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
#: Read-ahead block for remote reads: big enough to keep requests few,
#: small enough that many concurrent copies stay cheap in memory.
REMOTE_BLOCK = 8 * CHUNK
#: Seconds a successful reachability probe stays valid (see :meth:`Location._reachable`).
PROBE_INTERVAL = 60.0

#: Exception class names (anywhere in the cause chain) meaning "nobody answered".
_UNREACHABLE_NAMES = {
    "EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
    "ServiceRequestError", "ServiceRequestTimeoutError", "ConnectionRefusedError", "ClientOSError",
    "ConnectionError", "ConnectionResetError", "TimeoutError", "NameResolutionError", "gaierror",
    "ReadTimeoutError", "ServerTimeoutError", "ServiceResponseTimeoutError", "SocketTimeoutError", "FSTimeoutError",
}


# --------------------------------------------------------------------------- naming
def node_normalize(path: str) -> str:
    """Node's ``path.posix.normalize``, which differs from :func:`posixpath.normpath`.

    Node keeps a trailing slash, treats ``//x`` as ``/x`` and keeps leading
    ``..`` of relative paths; CairnCMS's keys are built with it, so we must too.
    """
    if path == "":
        return "."
    absolute = path.startswith("/")
    trailing = path.endswith("/")
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append("..")
            continue
        parts.append(seg)
    out = "/".join(parts)
    if absolute:
        out = "/" + out
    elif not out:
        out = "."
    if trailing and out not in ("/",) and not out.endswith("/"):
        out += "/"
    return out


def node_join(*parts: str) -> str:
    """Node's ``path.posix.join``: concatenate non-empty parts, then normalize."""
    joined = "/".join(p for p in parts if p)
    return node_normalize(joined) if joined else "."


def normalize_root(root: str | None) -> str:
    """The object-store root as CairnCMS's ``normalizePath(root, {removeLeading: true})`` leaves it.

    Backslashes count as separators, repeated slashes collapse, and the
    leading and trailing slashes go: ``/uploads/`` → ``uploads``.
    """
    if not root:
        return ""
    stack: list[str] = []
    for seg in str(root).replace("\\", "/").split("/"):
        if seg == "..":
            if stack:
                stack.pop()
        elif seg not in ("", "."):
            stack.append(seg)
    return "/".join(stack)


def object_key(root: str, filename_disk: str) -> str:
    """``normalizePath(join(root, filename_disk))`` for s3/gcs/azure, without a leading slash."""
    key = node_join(root, str(filename_disk)).lstrip("/")
    if not str(filename_disk).strip("/") or key in ("", ".") or key.endswith("/"):
        raise ConfigError(f"filename_disk {filename_disk!r} does not name an object")
    if key == ".." or key.startswith("../"):
        raise ConfigError(f"filename_disk {filename_disk!r} points outside the storage location")
    return key


def local_path(root: str, filename_disk: str) -> str:
    """``join(root, join('/', filename_disk))``: any ``..`` stops at the root."""
    rel = node_join("/", str(filename_disk)).lstrip("/")
    return os.path.join(root, rel) if rel else root


# --------------------------------------------------------------------------- errors
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_unreachable(exc: BaseException) -> bool:
    return any(type(e).__name__ in _UNREACHABLE_NAMES or isinstance(e, ConnectionError) for e in _chain(exc))


def _is_auth_error(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, PermissionError) or type(e).__name__ in ("ClientAuthenticationError", "NoCredentialsError"):
            return True
        if getattr(e, "status_code", None) in (401, 403) or getattr(e, "code", None) in (401, 403):
            return True
    return False


# --------------------------------------------------------------------------- Location

#: Prefix of the temporary files local writes go through (``files check`` reports leftovers as orphans).
PART_PREFIX = ".cairn-part-"


class _AtomicLocalFile:
    """Writes to ``.cairn-part-<random>-<name>`` beside ``path``; ``close`` renames it over ``path``.

    Leaving a ``with`` block on an exception discards the temporary file instead.
    """

    def __init__(self, path: str) -> None:
        import tempfile

        folder, base = os.path.split(path)
        fd, self._temp = tempfile.mkstemp(prefix=f"{PART_PREFIX}", suffix=f"-{base}"[:64], dir=folder)
        self._file = os.fdopen(fd, "wb")
        self._path = path
        self.closed = False

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        """Publish the bytes under the object's name (an atomic rename on the same disk)."""
        if self.closed:
            return
        self._file.close()
        os.replace(self._temp, self._path)
        self.closed = True

    def discard(self) -> None:
        if self.closed:
            return
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)
        self.closed = True

    def __enter__(self) -> _AtomicLocalFile:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

class Location:
    """One configured storage location: name the object, then read/write/list it.

    Built by :func:`open_location`.  Names passed to the methods are
    ``filename_disk`` values, relative to the location root, exactly as
    CairnCMS stores them in ``directus_files``.
    """

    def __init__(self, config: LocationConfig, fs: fsspec.AbstractFileSystem | Callable[[], Any], *,
                 container: str | None, root: str, endpoint: str | None, identity: tuple[Any, ...]) -> None:
        self.config = config
        # a filesystem, or a function building it on first use (s3fs costs a second of imports)
        self._fs: Any = None if callable(fs) and not isinstance(fs, fsspec.AbstractFileSystem) else fs
        self._fs_factory = fs if self._fs is None else None
        #: The lean S3 client (:mod:`.s3_lean`) for sizes, listings and the bucket check, where it applies.
        self.lean: Any = None
        self.container = container
        self.root = root
        self.endpoint = endpoint
        #: Two locations with the same identity can copy server-side.
        self.identity = identity
        self._probed_at = float("-inf")

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (built on first use)."""
        if self._fs is None:
            self._fs = self._fs_factory()
        return self._fs

    # naming ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def driver(self) -> str:
        return self.config.driver

    def setting(self, suffix: str) -> str:
        """The env variable behind an option, for messages: ``STORAGE_S3_BUCKET``."""
        return f"STORAGE_{self.name.upper()}_{suffix}"

    def path_for(self, filename_disk: str) -> str:
        """The full path of ``filename_disk`` in :attr:`fs` (no protocol)."""
        if self.container is None:
            return local_path(self.root, filename_disk)
        return f"{self.container}/{object_key(self.root, filename_disk)}"

    def _base(self) -> str:
        """The fs path of the location root, without a trailing slash."""
        if self.container is None:
            return self.root.rstrip("/") or "/"
        return f"{self.container}/{self.root}" if self.root else self.container

    def __repr__(self) -> str:
        return f"<Location {self.name} {self.driver} {self._base()}>"

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary without secrets."""
        out: dict[str, Any] = {"name": self.name, "driver": self.driver, "root": self.root}
        if self.container is not None:
            out["container" if self.driver == "azure" else "bucket"] = self.container
        if self.endpoint:
            out["endpoint"] = self.endpoint
        return out

    # error translation ---------------------------------------------------
    @contextmanager
    def _errors(self, action: str, name: str | None = None) -> Iterator[None]:
        """Translate library exceptions into our one-line, secret-free errors."""
        what = f"{action} {name!r} on" if name is not None else f"{action} on"
        try:
            yield
        except MigrateError:
            raise
        except FileNotFoundError as exc:
            if name is None:
                raise self._missing_container() from exc
            raise NotFound(f"{name!r} does not exist in storage location {self.name!r}") from exc
        except Exception as exc:
            if _is_unreachable(exc):
                raise self._unreachable(type(exc).__name__) from exc
            if _is_auth_error(exc):
                raise self._auth_failed() from exc
            raise MigrateError(f"could not {what} storage location {self.name!r}: {type(exc).__name__}") from exc

    def _unreachable(self, reason: str) -> InstanceUnreachable:
        where = self.endpoint or f"the {self.driver} service"
        hint = f"check {self.setting('ENDPOINT' if self.driver != 'gcs' else 'API_ENDPOINT')} and that the server runs"
        if "timeout" in reason.lower() or "timed out" in reason.lower():
            hint += f"; {timeouts.hint(timeouts.CONNECT_ENV, timeouts.READ_ENV)}"
        return InstanceUnreachable(f"storage location {self.name!r}: {where} is not reachable ({reason})", hint=hint)

    def _missing_container(self) -> ConfigError:
        if self.driver == "azure":
            return ConfigError(f"{self.setting('CONTAINER_NAME')}={self.container}: container does not exist",
                               hint="create the container or fix the setting")
        return ConfigError(f"{self.setting('BUCKET')}={self.container}: bucket does not exist",
                           hint="create the bucket or fix the setting")

    def _auth_failed(self) -> ConfigError:
        names = {"s3": ("KEY", "SECRET"), "azure": ("ACCOUNT_NAME", "ACCOUNT_KEY"), "gcs": ("KEY_FILENAME",)}
        settings = " / ".join(self.setting(s) for s in names.get(self.driver, ("ROOT",)))
        return ConfigError(f"storage location {self.name!r}: access denied, check {settings}",
                           hint="the credentials were rejected or lack permission")

    # checks --------------------------------------------------------------
    def check(self) -> None:
        """Verify the location is usable: server reachable, bucket/container (or local root) present.

        :raises InstanceUnreachable: nobody answers at the endpoint.
        :raises ConfigError: missing bucket/container/root or rejected credentials.
        """
        if self.container is None:
            if not os.path.isdir(self.root):
                raise ConfigError(f"{self.setting('ROOT')}={self.root}: folder does not exist",
                                  hint="create the folder or fix the setting")
            if not os.access(self.root, os.R_OK | os.X_OK):
                raise ConfigError(f"{self.setting('ROOT')}={self.root}: folder is not readable")
            return
        self._probed_at = float("-inf")  # always probe afresh
        self._reachable()
        with self._errors("check"):
            if not self._container_exists():
                raise self._missing_container()

    def _container_exists(self) -> bool:
        if self.lean is not None:
            return bool(self.lean.head_bucket())
        fs: Any = self.fs
        if self.driver == "s3":
            try:
                fs.call_s3("head_bucket", Bucket=self.container)
            except FileNotFoundError:
                return False
            return True
        if self.driver == "gcs":
            try:
                fs.call("GET", "b/{}", self.container, json_out=True)
            except FileNotFoundError:
                return False
            return True
        # azure
        from fsspec.asyn import sync

        client = fs.service_client.get_container_client(self.container)
        return bool(sync(fs.loop, client.exists))

    # object operations -----------------------------------------------------
    def _reachable(self) -> None:
        """Fail fast when the endpoint refuses connections.

        s3fs, gcsfs and the Azure SDK retry refused connections with back-off
        (up to ~90 s), and fsspec's ``isfile``/``exists`` turn any error into
        ``False``, which a migration would read as "the bytes are missing".
        One TCP probe per minute and location keeps a dead server a clear,
        immediate :class:`InstanceUnreachable` instead.
        """
        if not self.endpoint or self.container is None:
            return
        now = time.monotonic()
        if now - self._probed_at < PROBE_INTERVAL:
            return
        _tcp_probe(self.endpoint, self._unreachable)
        self._probed_at = now

    def exists(self, name: str) -> bool:
        """Whether the object exists (errors other than "not found" raise, never read as ``False``)."""
        return self.size(name) is not None

    def size(self, name: str) -> int | None:
        """Size in bytes, or ``None`` when there is no such object."""
        self._reachable()
        if self.lean is not None:
            with self._errors("look up", name):
                return self.lean.head(object_key(self.root, name))
        with self._errors("look up", name):
            try:
                info = self.fs.info(self.path_for(name))
            except FileNotFoundError:
                return None
        if info.get("type") == "directory":
            return None
        size = info.get("size")
        return None if size is None else int(size)

    def open_read(self, name: str) -> IO[bytes]:
        """A binary file object streaming the object's bytes (close it)."""
        kwargs = {} if self.container is None else {"block_size": REMOTE_BLOCK}
        self._reachable()
        with self._errors("read", name):
            return self.fs.open(self.path_for(name), "rb", **kwargs)

    def open_write(self, name: str) -> IO[bytes]:
        """A binary file object that creates/replaces the object on close, whole or not at all.

        Object stores publish an upload only when it completes; on local disk the bytes go
        to a hidden temporary file beside the object, renamed over it on a clean close, so a
        kill or an error half-way never leaves a truncated file under the name CairnCMS serves.
        """
        path = self.path_for(name)
        self._reachable()
        with self._errors("write", name):
            if self.container is None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                return _AtomicLocalFile(path)  # type: ignore[return-value]
            return self.fs.open(path, "wb", block_size=REMOTE_BLOCK)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_write(name) as fh:
            fh.write(data)

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as fh:
            return fh.read()

    def sha256(self, name: str, chunk: int = CHUNK) -> str:
        """Hex SHA-256 of the object, streamed ``chunk`` bytes at a time."""
        digest = hashlib.sha256()
        with self.open_read(name) as fh, self._errors("read", name):
            while block := fh.read(chunk):
                digest.update(block)
        return digest.hexdigest()

    def delete(self, name: str) -> None:
        """Delete the object; deleting a missing object is not an error (as on S3)."""
        self._reachable()
        with self._errors("delete", name):
            try:
                self.fs.rm_file(self.path_for(name))
            except FileNotFoundError:
                log.debug("delete %s on %s: already absent", name, self.name)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Every object under the root whose relative name starts with ``prefix``, recursively.

        Yields ``(filename_disk, size)``.  ``prefix`` is a plain string prefix
        (as CairnCMS's ``disk.list(id)``), not a folder.  S3 and local listings
        stream page by page; GCS and Azure list the prefix's keys in one go.
        """
        if self.container is None:
            yield from self._list_local(prefix)
            return
        base = f"{self.root}/" if self.root else ""
        self._reachable()
        with self._errors("list"):
            if self.lean is not None:
                entries: Iterator[dict[str, Any]] = (
                    {"name": f"{self.container}/{key}", "size": size, "type": "file"}
                    for page in self.lean.list(base + prefix) for key, size in page)
            elif self.driver == "s3":
                entries = self._iter_s3(base + prefix)
            else:
                path = self._base()
                if not self.fs.exists(self.container):
                    raise FileNotFoundError(self.container)
                found = self.fs.find(path, prefix=prefix, detail=True) if prefix else self.fs.find(path, detail=True)
                entries = iter(found.values())
            strip = len(self.container) + 1 + len(base)
            for entry in entries:
                if entry.get("type") == "directory":
                    continue
                full = entry["name"]
                if not full.startswith(f"{self.container}/{base}"):
                    continue
                rel = full[strip:]
                if rel.startswith(prefix) and rel:
                    yield rel, int(entry.get("size") or 0)

    def _iter_s3(self, key_prefix: str) -> Iterator[dict[str, Any]]:
        """Drive s3fs's async page iterator from sync code: one page in memory at a time."""
        from fsspec.asyn import sync

        fs: Any = self.fs
        agen = fs._iterdir(self.container, delimiter="", prefix=key_prefix)
        while True:
            try:
                yield sync(fs.loop, agen.__anext__)
            except StopAsyncIteration:
                return

    def _list_local(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = self.root
        if not os.path.isdir(root):
            raise ConfigError(f"{self.setting('ROOT')}={root}: folder does not exist")
        head, _, _ = prefix.rpartition("/")
        start = os.path.join(root, head) if head else root
        if not os.path.isdir(start):
            return
        stack = [start]
        while stack:
            current = stack.pop()
            with os.scandir(current) as it:
                for entry in sorted(it, key=lambda e: e.name):
                    rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
                    if entry.is_dir(follow_symlinks=False):
                        if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                            stack.append(entry.path)
                    elif entry.is_file() and rel.startswith(prefix):
                        yield rel, entry.stat().st_size

    def copy_to(self, name: str, other: Location, other_name: str | None = None) -> None:
        """Copy one object to ``other`` (server-side when both sit on the same service)."""
        other_name = name if other_name is None else other_name
        if self.identity == other.identity and self.driver in ("s3", "gcs", "local"):
            src, dst = self.path_for(name), other.path_for(other_name)
            self._reachable()
            with self._errors("copy", name):
                if self.container is None:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                self.fs.copy(src, dst)
            return
        with self.open_read(name) as src, other.open_write(other_name) as dst, self._errors("copy", name):
            shutil.copyfileobj(src, dst, CHUNK)


# --------------------------------------------------------------------------- drivers
def _tcp_probe(endpoint: str, error: Callable[[str], InstanceUnreachable]) -> None:
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeouts.connect_timeout()):
            pass
    except OSError as exc:
        raise error(type(exc).__name__ if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__) from exc


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _text(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    return None if value in (None, "") else str(value)


def _require(config: LocationConfig, key: str, suffix: str) -> str:
    value = _text(config.options, key)
    if value is None:
        raise ConfigError(f"STORAGE_{config.name.upper()}_{suffix} is not set",
                          hint=f"the {config.driver} driver needs it")
    return value


def _open_local(config: LocationConfig) -> Location:
    root = os.path.abspath(_text(config.options, "root") or ".")
    fs = fsspec.filesystem("file", skip_instance_cache=True)
    return Location(config, fs, container=None, root=root, endpoint=None, identity=("local",))


def _open_s3(config: LocationConfig) -> Location:
    opts = config.options
    bucket = _require(config, "bucket", "BUCKET")
    key, secret = _text(opts, "key"), _text(opts, "secret")
    if (key is None) != (secret is None):
        raise ConfigError(f"STORAGE_{config.name.upper()}_KEY and _SECRET must be set together",
                          hint="set both, or neither to use the AWS default credential chain")
    endpoint = _text(opts, "endpoint")
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if _text(opts, "region"):
        client_kwargs["region_name"] = _text(opts, "region")
    config_kwargs: dict[str, Any] = {"connect_timeout": timeouts.connect_timeout(),
                                     "read_timeout": timeouts.read_timeout(), "retries": {"max_attempts": 2}}
    if _truthy(opts.get("forcePathStyle")):
        config_kwargs["s3"] = {"addressing_style": "path"}
    extra: dict[str, Any] = {}
    if _text(opts, "acl"):
        extra["ACL"] = _text(opts, "acl")
    if _text(opts, "serverSideEncryption"):
        extra["ServerSideEncryption"] = _text(opts, "serverSideEncryption")
    def build() -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key=key, secret=secret, anon=False, client_kwargs=client_kwargs, config_kwargs=config_kwargs,
            s3_additional_kwargs=extra or None, skip_instance_cache=True, use_listings_cache=False,
        )

    identity = ("s3", endpoint, client_kwargs.get("region_name"), key, secret)
    location = Location(config, build, container=bucket, root=normalize_root(_text(opts, "root")),
                        endpoint=endpoint, identity=identity)
    from . import s3_lean

    location.lean = s3_lean.for_location(location)
    return location


def _open_gcs(config: LocationConfig) -> Location:
    import aiohttp
    import gcsfs

    opts = config.options
    bucket = _require(config, "bucket", "BUCKET")
    endpoint = _text(opts, "apiEndpoint")
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint
    token: Any = None
    if _text(opts, "keyFilename"):
        token = _text(opts, "keyFilename")
    elif isinstance(opts.get("credentials"), Mapping):
        token = dict(opts["credentials"])
    elif endpoint and "googleapis.com" not in endpoint:
        token = "anon"  # an emulator: no credentials to find, none needed
    with warnings.catch_warnings():
        # we never list or create buckets, so a missing project is fine
        warnings.filterwarnings("ignore", message="GCS project not set", category=UserWarning)
        fs = gcsfs.GCSFileSystem(
            project=_text(opts, "projectId"), token=token, endpoint_url=endpoint,
            skip_instance_cache=True, use_listings_cache=False,
            # passed to every aiohttp request as is (a bare number would be a total time, cutting big reads)
            requests_timeout=aiohttp.ClientTimeout(sock_connect=timeouts.connect_timeout(),
                                                   sock_read=timeouts.read_timeout()),
        )
    identity = ("gcs", endpoint, _text(opts, "projectId"), token if isinstance(token, str) else id(token))
    return Location(config, fs, container=bucket, root=normalize_root(_text(opts, "root")), endpoint=endpoint,
                    identity=identity)


def _open_azure(config: LocationConfig) -> Location:
    import adlfs

    opts = config.options
    container = _require(config, "containerName", "CONTAINER_NAME")
    account = _require(config, "accountName", "ACCOUNT_NAME")
    account_key = _text(opts, "accountKey")
    endpoint = _text(opts, "endpoint")
    connection_string = None
    if endpoint:
        if "://" not in endpoint:
            endpoint = "https://" + endpoint
        scheme = urlsplit(endpoint).scheme
        parts = [f"DefaultEndpointsProtocol={scheme}", f"AccountName={account}"]
        if account_key:
            parts.append(f"AccountKey={account_key}")
        parts.append(f"BlobEndpoint={endpoint.rstrip('/')}")
        connection_string = ";".join(parts) + ";"
        fs = adlfs.AzureBlobFileSystem(connection_string=connection_string, skip_instance_cache=True)
    else:
        fs = adlfs.AzureBlobFileSystem(account_name=account, account_key=account_key, skip_instance_cache=True)
    if connection_string or account_key:
        fs.service_client = _azure_client(connection_string, account, account_key)
    identity = ("azure", endpoint, account)
    return Location(config, fs, container=container, root=normalize_root(_text(opts, "root")),
                    endpoint=endpoint or f"https://{account}.blob.core.windows.net", identity=identity)


def _azure_client(connection_string: str | None, account: str, account_key: str | None) -> Any:
    """The Azure client adlfs would build, with our timeouts.

    adlfs builds it without any (the SDK then waits 300 s per connect and per
    read) and applies its own ``read_timeout`` to uploads and downloads only.
    """
    from azure.storage.blob.aio import BlobServiceClient

    # The SDK's default retry policy (10 tries with back-off) turns a 1 s timeout into a 90 s wait:
    # two retries, like our S3 client, keep the bound close to what the settings say.
    limits = {"connection_timeout": timeouts.connect_timeout(), "read_timeout": timeouts.read_timeout(),
              "retry_total": 2}
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **limits)
    return BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=account_key, **limits)


def _unsupported_cloudinary(config: LocationConfig) -> Location:
    raise UnsupportedDriver(
        f"storage location {config.name!r} uses the cloudinary driver, which cairn-migrate does not support yet",
        hint="copy its files with Cloudinary's own tools, or move them to a local/s3/gcs/azure location first",
    )


#: Driver name → builder, like fsspec's ``known_implementations``; plugins may add entries.
DRIVERS: dict[str, Callable[[LocationConfig], Location]] = {
    "local": _open_local,
    "s3": _open_s3,
    "gcs": _open_gcs,
    "azure": _open_azure,
    "cloudinary": _unsupported_cloudinary,
}


def open_location(config: LocationConfig) -> Location:
    """Build the :class:`Location` for a configured storage location (no network I/O).

    :raises UnsupportedDriver: for ``cloudinary`` and unknown drivers.
    :raises ConfigError: when a required option is missing.
    """
    builder = DRIVERS.get(config.driver)
    if builder is None:
        raise UnsupportedDriver(f"storage driver {config.driver!r} (location {config.name!r}) is not supported",
                                hint=f"use one of {', '.join(DRIVERS)}")
    return builder(config)


def upload_tree(local_dir: Path, location: Location) -> int:
    """Copy every file under ``local_dir`` to ``location`` (relative names kept); return the count."""
    count = 0
    base = Path(local_dir)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        name = path.relative_to(base).as_posix()
        with path.open("rb") as src, location.open_write(name) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        count += 1
    log.debug("uploaded %d files from %s to %s", count, base, location.name)
    return count


# --------------------------------------------------------------------------- async primitives
# Used by ``storage move`` to drive many copies at once on the event loop of
# fsspec's async filesystems (s3fs, gcsfs, adlfs share fsspec's IO loop), so
# that concurrent requests are not serialized behind one sync call each.
#: Part size of the checksummed multipart uploads (S3 allows 5 MiB .. 5 GiB, at most 10,000 parts).
PART = 16 * CHUNK
_PROBE_NAME = ".cairn-migrate-checksum-probe-"


def _b64(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode("ascii")


def async_loop(location: Location) -> Any:
    """The event loop of ``location``'s async filesystem, or ``None`` (local, or a sync filesystem)."""
    if location.container is None or not getattr(location.fs, "async_impl", False):
        return None
    return getattr(location.fs, "loop", None)


async def asize(location: Location, name: str) -> int | None:
    """:meth:`Location.size` as a coroutine (run it on :func:`async_loop`)."""
    if location.container is None:
        try:
            st = os.stat(location.path_for(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MigrateError(f"could not look up {name!r} on storage location {location.name!r}: "
                               f"{type(exc).__name__}") from exc
        import stat

        return st.st_size if stat.S_ISREG(st.st_mode) else None
    fs: Any = location.fs
    with location._errors("look up", name):
        try:
            info = await fs._info(location.path_for(name))
        except FileNotFoundError:
            return None
    if info.get("type") == "directory":
        return None
    size = info.get("size")
    return None if size is None else int(size)


async def aread(location: Location, name: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of the object (all of it by default) as a coroutine.

    Local files are read in the default executor when a range is asked (large
    files), directly otherwise (small files: cheaper than a thread hop).
    """
    path = location.path_for(name)
    if location.container is None:
        def read() -> bytes:
            with open(path, "rb") as fh:
                if start:
                    fh.seek(start)
                return fh.read() if end is None else fh.read(end - (start or 0))

        with location._errors("read", name):
            if start is None and end is None:
                return read()
            import asyncio

            return await asyncio.get_running_loop().run_in_executor(None, read)
    fs: Any = location.fs
    with location._errors("read", name):
        return await fs._cat_file(path, start=start, end=end)


async def apipe(location: Location, name: str, data: bytes) -> None:
    """Create/replace an object with ``data`` on an async filesystem (no checksum)."""
    fs: Any = location.fs
    with location._errors("write", name):
        await fs._pipe_file(location.path_for(name), data)


def s3_verifies_checksums(location: Location) -> bool:
    """Whether this S3 service rejects a body whose ``x-amz-checksum-sha256`` does not match.

    One probe PUT with a wrong SHA-256 under the root: a service that checks
    answers an error and stores nothing; one that accepts it does not verify
    (the probe object is deleted again), so callers must read bytes back.
    """
    if location.driver != "s3" or async_loop(location) is None:
        return False
    import uuid

    name = f"{_PROBE_NAME}{uuid.uuid4().hex}"
    fs: Any = location.fs
    bucket, key = location.container, object_key(location.root, name)
    location._reachable()
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"probe",
                   ChecksumSHA256=_b64(hashlib.sha256(b"not the probe").digest()))
    except Exception as exc:  # the wrong checksum was refused: the service verifies
        if _is_unreachable(exc):
            raise location._unreachable(type(exc).__name__) from exc
        if _is_auth_error(exc):
            raise location._auth_failed() from exc
        return True
    location.delete(name)
    log.info("storage location %s does not verify SHA-256 checksums; copies are read back", location.name)
    return False


async def s3_put_verified(location: Location, name: str, data: bytes, digest: bytes) -> bool:
    """PUT ``data`` with its SHA-256 for the service to check; ``True`` when it confirmed that SHA-256.

    Only meaningful where :func:`s3_verifies_checksums` holds: then the
    service refuses a body whose hash differs, and answers the hash of what it
    stored.
    """
    fs: Any = location.fs
    expected = _b64(digest)
    with location._errors("write", name):
        out = await fs._call_s3("put_object", Bucket=location.container, Key=object_key(location.root, name),
                                Body=data, ChecksumSHA256=expected)
    return out.get("ChecksumSHA256") == expected


async def s3_upload_verified(location: Location, name: str, size: int,
                             read: Callable[[int, int], Any], part_slots: Any) -> tuple[str, bool]:
    """Stream a large object into ``name`` as a multipart upload with a SHA-256 per part.

    ``read(start, end)`` is a coroutine function returning those source bytes;
    ``part_slots`` an :class:`asyncio.Semaphore` bounding the parts in memory
    (each at most :data:`PART` bytes).  The service checks every part's
    SHA-256; the upload is completed with them and the composite checksum it
    answers is compared with ours.  Returns ``(hex sha256 of all bytes read,
    verified)``: ``verified`` is ``True`` when the composite checksum matches
    and the stored object has ``size`` bytes.
    """
    import asyncio

    fs: Any = location.fs
    bucket, key = location.container, object_key(location.root, name)
    part_size = max(PART, -(-size // 10000))
    full = hashlib.sha256()
    loop = asyncio.get_running_loop()
    with location._errors("write", name):
        upload = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    upload_id = upload["UploadId"]
    tasks: list[asyncio.Task[dict[str, Any]]] = []

    async def send(number: int, data: bytes, digest: bytes) -> dict[str, Any]:
        with location._errors("write", name):
            out = await fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                                    PartNumber=number, Body=data, ChecksumSHA256=_b64(digest))
        return {"PartNumber": number, "ETag": out["ETag"], "ChecksumSHA256": out.get("ChecksumSHA256")}

    try:
        digests: list[bytes] = []
        for number, start in enumerate(range(0, size, part_size), 1):
            await part_slots.acquire()
            try:
                data = await read(start, min(size, start + part_size))
                digest = (await loop.run_in_executor(None, _hash_part, full, data)) if data else b""
            except BaseException:
                part_slots.release()
                raise
            if len(data) != min(size, start + part_size) - start:
                part_slots.release()
                raise MigrateError(f"{name!r}: the source changed size while it was copied")
            digests.append(digest)
            task = asyncio.ensure_future(send(number, data, digest))
            task.add_done_callback(lambda _task: part_slots.release())  # also when cancelled before it ran
            tasks.append(task)
        parts = await asyncio.gather(*tasks)
        with location._errors("write", name):
            done = await fs._call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # best effort: an unfinished upload only costs storage until the bucket's lifecycle
            log.debug("abort of the multipart upload of %s failed", name, exc_info=True)
        raise
    composite = f"{_b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"
    confirmed = done.get("ChecksumSHA256") == composite and all(
        p["ChecksumSHA256"] == _b64(d) for p, d in zip(parts, digests))
    if confirmed:
        with location._errors("look up", name):
            head = await fs._call_s3("head_object", Bucket=bucket, Key=key)
        confirmed = int(head.get("ContentLength", -1)) == size
    return full.hexdigest(), confirmed


def _hash_part(full: Any, data: bytes) -> bytes:
    """Feed the whole-object hash and return the part's SHA-256 (runs in a thread: hashlib drops the GIL)."""
    full.update(data)
    return hashlib.sha256(data).digest()
