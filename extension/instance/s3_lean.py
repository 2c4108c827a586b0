"""A lean S3 client for the hot paths of ``storage move`` and ``files check``: signed PUT, HEAD and LIST.

``files check`` lists through it too (ListObjectsV2 pages parsed with
ElementTree: botocore parses every ``LastModified`` with dateutil).

botocore spends about 1 ms of CPU per request in its machinery (event
dispatch, endpoint resolution, user agent, signing through several layers);
a move of many small objects is CPU-bound on it, while the object itself
costs a file read and a SHA-256 of a few kB.  This client does only what one
PUT or HEAD needs: AWS Signature Version 4 (the signing key cached per day),
one :class:`http.client.HTTPConnection` kept alive per thread, the
connect/read timeouts of :mod:`.timeouts`, one retry on a dropped keep-alive
connection or a 5xx answer (botocore's ``max_attempts: 2``).

It is used only where it is the same request botocore would send: static
credentials (``KEY``/``SECRET``), path-style addressing on a configured
endpoint (``FORCE_PATH_STYLE``) or AWS's own virtual-hosted endpoint of the
configured region.  Anything else (the default credential chain, session
tokens, virtual-hosted custom endpoints) keeps s3fs/aiobotocore
(:func:`for_location` answers ``None``), as does ``CAIRN_MIGRATE_S3_LEAN=0``.

Errors are raised as plain exceptions (:class:`S3Error` with the HTTP
status, or the socket's own) for :meth:`.storage.Location._errors` to
translate, exactly as it translates botocore's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

from . import timeouts

#: ``CAIRN_MIGRATE_S3_LEAN=0`` turns this client off (every request through s3fs/aiobotocore again).
LEAN_ENV = "CAIRN_MIGRATE_S3_LEAN"

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: Exceptions after which a request is sent once more on a fresh connection (the server closed a kept one).
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError, BrokenPipeError,
          ConnectionAbortedError)


class S3Error(Exception):
    """An S3 error answer: ``status_code`` and the service's error ``code`` (``NoSuchBucket``, ...)."""

    def __init__(self, status_code: int, code: str, message: str = "") -> None:
        super().__init__(f"{status_code} {code} {message}".strip())
        self.status_code = status_code
        self.code = code


_BLOCK = 1024 * 1024


class _Body:
    """The first ``size`` bytes of an open file as a request body http.client streams; fails if the file got shorter."""

    def __init__(self, fh: Any, size: int) -> None:
        self.fh, self.size, self.left = fh, size, size

    def __len__(self) -> int:
        return self.size

    def rewind(self) -> None:
        self.fh.seek(0)
        self.left = self.size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        block = self.fh.read(min(self.left, _BLOCK if n is None or n < 0 else n))
        if not block:
            raise OSError("the source file got shorter while it was sent")
        self.left -= len(block)
        return block


def _close_all(conns: set[http.client.HTTPConnection], lock: threading.Lock) -> None:
    with lock:
        closing = list(conns)
        conns.clear()
    for conn in closing:
        conn.close()


def _error_code(body: bytes) -> str:
    start = body.find(b"<Code>")
    end = body.find(b"</Code>")
    return body[start + 6:end].decode("utf-8", "replace") if start >= 0 and end > start else ""


class LeanS3:
    """Signed requests to one bucket; safe to share between threads (each thread keeps its own connection)."""

    def __init__(self, *, endpoint: str, region: str, key: str, secret: str, bucket: str, path_style: bool,
                 extra_headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(endpoint)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        default_port = self.port == (443 if self.https else 80)
        netloc = self.host if default_port else f"{self.host}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        if path_style:
            self.host_header = netloc
            self.prefix = f"{self.base_path}/{quote(bucket, safe='')}/"
        else:
            self.host = f"{bucket}.{self.host}"
            self.host_header = f"{bucket}.{netloc}"
            self.prefix = f"{self.base_path}/"
        self.region, self.key, self.secret = region, key, secret
        self.extra = {k.lower(): v for k, v in (extra_headers or {}).items()}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()
        # a client dropped without close() (a Location nobody closes) still closes its sockets
        weakref.finalize(self, _close_all, self._open, self._lock)
        self._signing: tuple[str, bytes] = ("", b"")

    # connections -----------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:  # none yet, or closed by :meth:`close`
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=timeouts.connect_timeout(), blocksize=_BLOCK)
            conn.connect()
            conn.sock.settimeout(timeouts.read_timeout())  # connected: from now on a silent server is a read timeout
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def close(self) -> None:
        """Close every thread's connection (call it when no request is running any more)."""
        _close_all(self._open, self._lock)

    # signing ---------------------------------------------------------------
    def _signing_key(self, day: str) -> bytes:
        cached_day, cached = self._signing
        if cached_day == day:
            return cached
        key = ("AWS4" + self.secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._signing = (day, key)
        return key

    def _signed(self, method: str, path: str, headers: dict[str, str], payload_sha256: str,
                query: str = "") -> dict[str, str]:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        headers = {**headers, "host": self.host_header, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256}
        names = sorted(headers)
        canonical = "\n".join([method, path, query, *(f"{n}:{str(headers[n]).strip()}" for n in names), "",
                               ";".join(names), payload_sha256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return headers

    def path(self, key: str) -> str:
        """The request path (and canonical URI) of an object key."""
        return self.prefix + quote(key, safe="/~")

    # requests --------------------------------------------------------------
    def _request(self, method: str, key: str, headers: dict[str, str], body: bytes | _Body | None,
                 payload_sha256: str, query: str = "") -> tuple[int, http.client.HTTPResponse, bytes]:
        path = self.path(key)
        target = f"{path}?{query}" if query else path
        for attempt in (1, 2):
            signed = self._signed(method, path, headers, payload_sha256, query)
            if isinstance(body, _Body):
                body.rewind()
            if body is not None:
                signed["content-length"] = str(len(body))
            try:
                conn = self._connection()
                conn.request(method, target, body=body, headers=signed)
                response = conn.getresponse()
                data = response.read()
            except _STALE:
                self._drop()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                self._drop()
                raise
            if response.will_close:
                self._drop()
            if response.status >= 500 and attempt == 1:
                continue
            return response.status, response, data
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, key: str, data: bytes, digest: bytes) -> str | None:
        """PUT ``data`` whose SHA-256 is ``digest``, asking the service to check it.

        Sends the SHA-256 twice: as the signed payload hash and as
        ``x-amz-checksum-sha256``.  Returns the ``x-amz-checksum-sha256`` the
        service answered (the hash of what it stored), ``None`` if it answered none.

        :raises S3Error: any answer other than 200 (a refused checksum included).
        """
        headers = {"x-amz-checksum-sha256": base64.b64encode(digest).decode("ascii"), **self.extra}
        status, response, body = self._request("PUT", key, headers, data, digest.hex())
        if status != 200:
            raise S3Error(status, _error_code(body) or response.reason)
        return response.getheader("x-amz-checksum-sha256")

    def put_file(self, key: str, path: str, size: int, digest: bytes) -> str | None:
        """:meth:`put` of the first ``size`` bytes of a local file, streamed (1 MiB blocks, never all in memory).

        ``digest`` is their SHA-256, from a first read: bytes that changed since
        do not hash to it and the service refuses them (a checking service only).
        """
        headers = {"x-amz-checksum-sha256": base64.b64encode(digest).decode("ascii"), **self.extra}
        with open(path, "rb") as fh:
            status, response, body = self._request("PUT", key, headers, _Body(fh, size), digest.hex())
        if status != 200:
            raise S3Error(status, _error_code(body) or response.reason)
        return response.getheader("x-amz-checksum-sha256")

    def head(self, key: str) -> int | None:
        """The object's size, or ``None`` when there is none (404).

        :raises S3Error: any other answer than 200 or 404.
        """
        status, response, _ = self._request("HEAD", key, {}, None, _EMPTY_SHA256)
        if status == 404:
            return None
        if status != 200:
            raise S3Error(status, response.reason)
        return int(response.getheader("content-length") or 0)


    def head_bucket(self) -> bool:
        """Whether the bucket exists.

        :raises S3Error: any answer other than 200 or 404 (403: the credentials).
        """
        status, response, _ = self._request("HEAD", "", {}, None, _EMPTY_SHA256)
        if status == 404:
            return False
        if status != 200:
            raise S3Error(status, response.reason)
        return True

    def list(self, prefix: str = "", page_size: int = 1000) -> Iterator[list[tuple[str, int]]]:
        """``(key, size)`` of every object whose key starts with ``prefix``, a ListObjectsV2 page at a time.

        :raises FileNotFoundError: the bucket does not exist.
        :raises S3Error: any other error answer.
        """
        token: str | None = None
        while True:
            params = {"list-type": "2", "max-keys": str(page_size), "prefix": prefix}
            if token:
                params["continuation-token"] = token
            query = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(params.items()))
            status, response, body = self._request("GET", "", {}, None, _EMPTY_SHA256, query)
            if status == 404:
                raise FileNotFoundError(_error_code(body) or "NoSuchBucket")
            if status != 200:
                raise S3Error(status, _error_code(body) or response.reason)
            root = ElementTree.fromstring(body)
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            yield [(c.findtext(f"{ns}Key") or "", int(c.findtext(f"{ns}Size") or 0))
                   for c in root.iter(f"{ns}Contents")]
            token = root.findtext(f"{ns}NextContinuationToken")
            if (root.findtext(f"{ns}IsTruncated") or "").lower() != "true" or not token:
                return


def for_location(location: Any) -> LeanS3 | None:
    """A :class:`LeanS3` for an S3 :class:`.storage.Location` where it sends botocore's very requests, else ``None``."""
    import os

    from .storage import _text, _truthy

    if location.driver != "s3" or location.container is None:
        return None
    if os.environ.get(LEAN_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    opts = location.config.options
    key, secret = _text(opts, "key"), _text(opts, "secret")
    if key is None or secret is None or _text(opts, "sessionToken") or _text(opts, "token"):
        return None
    region = _text(opts, "region")
    endpoint = location.endpoint
    extra: dict[str, str] = {}
    if _text(opts, "acl"):
        extra["x-amz-acl"] = str(_text(opts, "acl"))
    if _text(opts, "serverSideEncryption"):
        extra["x-amz-server-side-encryption"] = str(_text(opts, "serverSideEncryption"))
    if endpoint and _truthy(opts.get("forcePathStyle")):
        return LeanS3(endpoint=endpoint, region=region or "us-east-1", key=key, secret=secret,
                      bucket=location.container, path_style=True, extra_headers=extra)
    if not endpoint and region and "." not in location.container:
        return LeanS3(endpoint=f"https://s3.{region}.amazonaws.com", region=region, key=key, secret=secret,
                      bucket=location.container, path_style=False, extra_headers=extra)
    return None
