"""The bundle container: a directory, or one tar(.gz)(.enc) archive of it.

A bundle is untrusted input the moment it leaves the machine that wrote it, so
this module owns every rule that makes reading one safe (docs/bundle-format.md):
member paths cannot leave the destination, only regular files are accepted,
every byte is checked against the manifest's size and sha256 while it streams,
and nothing that failed a check is left behind looking like a bundle.  The
exporter and importer only ever see a validated directory.

Everything streams in 1 MiB pieces: archives of any size are packed, encrypted,
unpacked and verified in constant memory.  Encryption is chunked AES-256-GCM
(the STREAM construction): a chunk is authenticated before its bytes are used,
and the final-chunk flag in the associated data detects truncation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import tarfile
import tempfile
import threading
import unicodedata
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import InvalidInput, MigrateError, NotFound

log = logging.getLogger(__name__)

FORMAT = "cairn-migrate-bundle"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = {1, 2}
MANIFEST = "manifest.json"
BUF = 1 << 20
MAX_MANIFEST_BYTES = 256 << 20
# Level 1: table JSONL still shrinks ~5x at 3-4x the speed of level 6, and
# uploads (images, PDFs, video) are already compressed, where higher levels
# only burn CPU.  Measured on JSONL: level 1 ratio 0.21 at 180 MB/s, level 6
# 0.15 at 50 MB/s.
DEFAULT_GZIP_LEVEL = 1

# Encryption header (docs/bundle-format.md "Encryption"), 44 bytes, big-endian.
MAGIC = b"CAIRNENC"
ENC_VERSION = 1
CIPHER_AES256GCM = 1
KDF_SCRYPT, KDF_RAW = 1, 2
_HEADER = struct.Struct(">8sBBBBBBH16s8sI")
HEADER_SIZE = _HEADER.size
CHUNK_SIZE = BUF
TAG = 16
# scrypt N=2^17, r=8, p=1 (128 MiB, ~0.35 s): the OWASP floor; a bundle is an
# offline target.  Readers cap the cost so a forged header cannot exhaust RAM.
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 17, 8, 1
_MAX_SCRYPT_MEM = 256 << 20
_HKDF_INFO = b"cairn-migrate bundle v1 aes-256-gcm"


class BundleError(MigrateError):
    """A bundle that is malformed, damaged, tampered with, or not ours."""

    exit_code = 2
    http_status = 422
    code = "bad_bundle"

    def __init__(self, message: str, *, rule: str = "bad_bundle", member: str | None = None,
                 hint: str | None = None, details: dict[str, Any] | None = None) -> None:
        details = (details or {}) | {"rule": rule} | ({"member": member} if member is not None else {})
        super().__init__(message, hint=hint, details=details)
        self.rule = rule
        self.member = member


#: The fix for a bundle whose bytes are not what the export wrote (cut short, garbled, or no archive at all).
_DAMAGED = "the bundle is damaged: copy it again, or export it again from the source"
_DAMAGED_RULES = frozenset({"truncated", "damaged", "not_tar", "trailing_data", "bad_header", "checksum", "size",
                            "missing_member"})


def _bad(rule: str, member: str | None, message: str, cls: type[BundleError] = BundleError, *,
         hint: str | None = None) -> BundleError:
    """The error of ``rule``; a damaged bundle's error says how to get a whole one unless ``hint`` says otherwise."""
    return cls(message, rule=rule, member=member, hint=hint or (_DAMAGED if rule in _DAMAGED_RULES else None))


#: The fix for a manifest or file index that names what no export writes.
_NOT_OURS = "cairn-migrate never writes such a bundle: export it again from the source instance"


class BundlePassphraseRequired(BundleError):
    """The bundle is encrypted and no passphrase or key file was given (a shell may prompt)."""

    code = "passphrase_required"


class BundleDecryptError(BundleError):
    """Authentication failed: wrong passphrase or key file, or modified ciphertext."""

    code = "decrypt_failed"


# -- paths and manifest ---------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # undecodable bytes in a tar name


_PATH_RULES = (
    (lambda p: "\x00" in p, "contains NUL"),
    (lambda p: "\\" in p, "contains a backslash"),
    (lambda p: p.startswith("/"), "absolute path"),
    (lambda p: _DRIVE.match(p), "drive letter"),
    (lambda p: _CONTROL.search(p), "contains a control character"),
    (lambda p: any(part in ("", ".", "..") for part in p.split("/")), "'..', '.' or empty component (path traversal)"),
    (lambda p: _SURROGATE.search(p), "not valid UTF-8"),
    (lambda p: unicodedata.normalize("NFC", p) != p, "not NFC-normalised"),
)


def check_relpath(relpath: object) -> str:
    """Return ``relpath`` if it is a safe relative POSIX path, else raise BundleError (rule ``unsafe_path``).

    Rejected rather than normalised: a bundle we wrote never needs fixing, so
    anything unusual is damage or an attack.
    """
    if not isinstance(relpath, str) or not relpath:
        raise _bad("unsafe_path", str(relpath), f"unsafe member path {relpath!r}: empty or not a string")
    for test, why in _PATH_RULES:
        if test(relpath):
            raise _bad("unsafe_path", relpath, f"unsafe member path {relpath!r}: {why}")
    return relpath


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad("bad_manifest", MANIFEST, f"manifest.json has the key {key!r} twice")
        out[key] = value
    return out


def _tool_version() -> str:
    try:
        from importlib.metadata import version
        return version("cairn-migrate")
    except Exception:  # noqa: BLE001 - only used in a message
        return "unknown"


def _check_version(version: object) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad("unsupported_version", MANIFEST, f"invalid format_version {version!r}")
    if version in SUPPORTED_VERSIONS:
        return
    reads = ", ".join(map(str, sorted(SUPPORTED_VERSIONS)))
    if version > max(SUPPORTED_VERSIONS):
        raise _bad("unsupported_version", MANIFEST,
                   f"bundle format_version {version} was made by a newer cairn-migrate; upgrade cairn-migrate to a "
                   f"version that reads format_version {version} (this is cairn-migrate {_tool_version()}, which "
                   f"reads format_version {reads})")
    raise _bad("unsupported_version", MANIFEST, f"bundle format_version {version} is no longer supported by "
               f"cairn-migrate {_tool_version()} (reads {reads}); use an older cairn-migrate")


def parse_manifest(raw: bytes) -> dict[str, Any]:
    """Parse and check manifest bytes: a JSON object, our ``format``, a supported ``format_version``, sane ``members``.

    Duplicate JSON keys are rejected: with them, two readers could disagree on
    what a bundle contains.
    """
    try:
        manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad("bad_manifest", MANIFEST, f"manifest.json is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise _bad("bad_manifest", MANIFEST, "manifest.json is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise _bad("unknown_format", MANIFEST, f"unknown bundle format {manifest.get('format')!r} (expected "
                   f"{FORMAT!r}): not a cairn-migrate bundle")
    _check_version(manifest.get("format_version"))
    members = manifest.get("members")
    if not isinstance(members, dict):
        raise _bad("bad_manifest", MANIFEST, "manifest.json has no 'members' object")
    for name, entry in members.items():
        check_relpath(name)
        if name == MANIFEST:
            raise _bad("bad_manifest", name, "manifest.json lists itself as a member")
        size, sha = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if type(size) is not int or size < 0 or not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise _bad("bad_manifest", name, f"manifest entry for {name!r} needs an integer 'size' and a lowercase "
                       "hex 'sha256'")
        parts = name.split("/")  # "a" and "a/b" cannot both be files
        if any("/".join(parts[:i]) in members for i in range(1, len(parts))):
            raise _bad("bad_manifest", name, f"member {name!r} lies under another member, which is a file")
    return manifest


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``<bundle_dir>/manifest.json`` (members are not verified: see :func:`validate_directory`)."""
    path = Path(bundle_dir) / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise _bad("manifest_missing", MANIFEST, f"{bundle_dir}: manifest.json is missing (not a bundle, or an "
                   "incomplete export)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise _bad("bad_manifest", MANIFEST, "manifest.json is too large")
    return parse_manifest(path.read_bytes())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BUF):
            digest.update(block)
    return digest.hexdigest()


# -- writing a directory bundle -------------------------------------------------------------------

class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self.sha.update(view)
        self.size += len(view)
        return len(view)


class BundleDirWriter:
    """Writes members into a directory bundle and records their size and sha256 as they stream.

    The exporter writes every file through :meth:`open` / :meth:`add_file` and
    calls :meth:`write_manifest` last, so a directory with a manifest.json is
    always complete (a crash leaves a directory that fails validation).
    Thread-safe: storage copies may run in parallel.
    """

    def __init__(self, bundle_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(bundle_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, dict[str, Any]] = {}
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def open(self, relpath: str) -> Iterator[IO[bytes]]:
        """Yield a binary file for member ``relpath``; recorded only if the block finishes, else deleted."""
        check_relpath(relpath)
        if relpath == MANIFEST:
            raise InvalidInput("manifest.json is written by write_manifest(), not as a member")
        with self._lock:
            if relpath in self._reserved:
                raise InvalidInput(f"bundle member {relpath!r} written twice")
            self._reserved.add(relpath)
        path = self.dir / relpath
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as raw:
                writer = _HashingWriter(raw)
                try:
                    yield writer  # type: ignore[misc]
                except BaseException:
                    raw.close()
                    path.unlink(missing_ok=True)
                    raise
        except BaseException:
            with self._lock:
                self._reserved.discard(relpath)
            raise
        with self._lock:
            self.members[relpath] = {"size": writer.size, "sha256": writer.sha.hexdigest()}

    def add_file(self, relpath: str, src: IO[bytes]) -> dict[str, Any]:
        """Copy the readable binary ``src`` into member ``relpath``; return its manifest entry."""
        with self.open(relpath) as dst:
            shutil.copyfileobj(src, dst, BUF)
        return self.members[relpath]

    def add_bytes(self, relpath: str, data: bytes) -> dict[str, Any]:
        """Write a small in-memory member (schema files and the like); return its manifest entry."""
        with self.open(relpath) as dst:
            dst.write(data)
        return self.members[relpath]

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        """Write manifest.json atomically (tmp + fsync + rename) with ``members`` set from what was written."""
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION} | manifest
        if manifest["format"] != FORMAT or manifest["format_version"] != FORMAT_VERSION:
            raise InvalidInput("write_manifest: leave format/format_version to the bundle module")
        with self._lock:
            manifest["members"] = dict(self.members)
        tmp, final = self.dir / (MANIFEST + ".tmp"), self.dir / MANIFEST
        with open(tmp, "wb") as fh:
            fh.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final


MemberWriter = BundleDirWriter


# -- directory validation -------------------------------------------------------------------------

def _scan(bundle_dir: Path, members: dict[str, Any]) -> None:
    """Cheap checks without hashing: no links or special files, no unlisted file, every member present at its size."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(bundle_dir, followlinks=False):
        rel_root = Path(root).relative_to(bundle_dir).as_posix()
        for name in dirs + files:
            rel, path = (name if rel_root == "." else f"{rel_root}/{name}"), os.path.join(root, name)
            if os.path.islink(path):
                raise _bad("link", rel, f"{rel!r} is a symlink; bundles contain only regular files")
            if name in dirs or rel == MANIFEST:
                continue
            if not os.path.isfile(path):
                raise _bad("special_file", rel, f"{rel!r} is not a regular file")
            if rel not in members:
                raise _bad("unlisted", rel, f"{rel!r} is not listed in the manifest")
            if (size := os.lstat(path).st_size) != members[rel]["size"]:
                raise _bad("size", rel, f"size mismatch for {rel!r}: {size} bytes, manifest says "
                           f"{members[rel]['size']}")
            seen.add(rel)
    for name in members.keys() - seen:
        raise _bad("missing_member", name, f"member {name!r} is listed in the manifest but missing")


def validate_directory(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a directory bundle in place (every rule, every member hashed) and return its manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    _scan(bundle_dir, manifest["members"])
    for name, entry in manifest["members"].items():
        if sha256_file(bundle_dir / name) != entry["sha256"]:
            raise _bad("checksum", name, f"checksum mismatch for {name!r} (sha256 differs from the manifest)")
    return manifest


# -- what the manifest points at ------------------------------------------------------------------
#
# The container rules above make every *member* safe.  A full bundle's manifest and file index also
# *name* members (``tables.<t>.member``, ``native.member``, ``files.member``, ``snapshots.*``) and
# build member paths from file rows (``files/<storage>/<filename_disk>``).  Those names are checked
# here, once, for every reader: a name must be a listed member (so it passed every rule and its
# bytes were hashed), never a path that leaves the bundle.

#: ``directus_files.filename_disk`` is varchar(255) (reference §1.3).
OBJECT_NAME_MAX = 255
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def check_object_name(name: object) -> str:
    """Return ``name`` if it is a ``filename_disk`` CairnCMS can produce, else raise BundleError (``bad_object_name``).

    CairnCMS writes ``<id><ext>`` at the location root and transforms as
    ``<id>__<sha1>.<ext>`` next to it; storage moves and older layouts add
    sub-folders (``legacy/a.txt``).  All are relative POSIX paths of at most
    255 characters, which the member-path rules already describe; an absolute
    name, a ``..`` component or a backslash is never one of them (reference §6.6).
    """
    if not isinstance(name, str) or len(name) > OBJECT_NAME_MAX:
        raise _bad("bad_object_name", None, f"file index names the object {str(name)[:80]!r}: not a string of at most "
                   f"{OBJECT_NAME_MAX} characters, so not a CairnCMS filename_disk", hint=_NOT_OURS)
    try:
        return check_relpath(name)
    except BundleError as exc:
        raise _bad("bad_object_name", None, f"file index names the object {name!r}, which is not a CairnCMS "
                   f"filename_disk ({exc.message.rsplit(': ', 1)[-1]})", hint=_NOT_OURS) from None


def check_location_name(name: object) -> str:
    """Return ``name`` if it can be a storage location name (one path component), else raise BundleError."""
    if not isinstance(name, str) or "/" in name or "," in name:
        raise _bad("bad_object_name", None, f"file index names the storage location {name!r}, which is not a "
                   "STORAGE_LOCATIONS entry", hint=_NOT_OURS)
    try:
        return check_relpath(name)
    except BundleError:
        raise _bad("bad_object_name", None, f"file index names the storage location {name!r}, which is not a "
                   "STORAGE_LOCATIONS entry", hint=_NOT_OURS) from None


def member_path(bundle_dir: str | os.PathLike[str], manifest: Mapping[str, Any], relpath: object, *,
                field: str, directory: bool = False) -> Path:
    """The path of the member ``relpath`` (a file, or with ``directory`` also a folder of members) inside ``bundle_dir``.

    Refused (rule ``outside_bundle``) unless ``relpath`` is a safe relative
    path that the manifest lists: an absolute path or ``..`` would read the
    sidecar host's own files.  ``field`` names the manifest field in the error.
    """
    try:
        check_relpath(relpath)
    except BundleError as exc:
        raise _bad("outside_bundle", str(relpath), f"manifest field {field} points outside the bundle: "
                   f"{exc.message.removeprefix('unsafe member path ')}", hint=_NOT_OURS) from None
    members = manifest.get("members") or {}
    listed = relpath in members or (directory and any(name.startswith(f"{relpath}/") for name in members))
    if not listed:
        raise _bad("outside_bundle", str(relpath), f"manifest field {field} names {relpath!r}, which is not a member "
                   "of the bundle", hint=_NOT_OURS)
    root = Path(bundle_dir)
    path = root / str(relpath)
    if not path.resolve().is_relative_to(root.resolve()):  # a symlinked folder: validation refuses it too
        raise _bad("outside_bundle", str(relpath), f"manifest field {field}: {relpath!r} resolves outside the bundle",
                   hint=_NOT_OURS)
    return path


def file_member(storage: object, filename_disk: object) -> str:
    """The member holding the bytes of ``(storage, filename_disk)``: ``files/<storage>/<filename_disk>``, both names checked."""
    return f"files/{check_location_name(storage)}/{check_object_name(filename_disk)}"


def _index_entry(line: bytes, number: int, members: Mapping[str, Any]) -> list[Any]:
    where = f"files index line {number}"
    try:
        entry = json.loads(line)
    except ValueError:
        raise _bad("bad_file_index", None, f"{where} is not JSON", hint=_NOT_OURS) from None
    if not (isinstance(entry, list) and len(entry) == 5):
        raise _bad("bad_file_index", None, f"{where} is not [id, storage, filename_disk, size, sha256]", hint=_NOT_OURS)
    file_id, storage, filename_disk, size, sha = entry
    if not isinstance(file_id, str) or not _UUID.fullmatch(file_id):
        raise _bad("bad_file_index", None, f"{where}: id {str(file_id)[:80]!r} is not a UUID", hint=_NOT_OURS)
    member = file_member(storage, filename_disk)
    listed = members.get(member)
    if listed is None or listed["size"] != size or listed["sha256"] != sha:
        raise _bad("bad_file_index", member, f"{where}: {member!r} is not a member of the bundle with the size and "
                   "sha256 the index gives", hint=_NOT_OURS)
    return entry


def iter_file_index(bundle_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Iterator[list[Any]]:
    """Yield ``[id, storage, filename_disk, size, sha256]`` per file of the bundle, each entry checked.

    Every entry must name a listed member ``files/<storage>/<filename_disk>``
    whose size and sha256 are the entry's, so the bytes a reader copies are
    the bytes the manifest vouches for, and never a file outside the bundle.
    """
    files = manifest.get("files")
    if not isinstance(files, Mapping):
        raise _bad("bad_manifest", MANIFEST, "manifest.json has no 'files' object", hint=_NOT_OURS)
    path = member_path(bundle_dir, manifest, files.get("member"), field="files.member")
    members = manifest["members"]
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield _index_entry(line, number, members)


def _check_tables(bundle_dir: Path, manifest: Mapping[str, Any]) -> None:
    order, tables = manifest.get("load_order"), manifest.get("tables")
    if not isinstance(order, list) or not isinstance(tables, Mapping) or not all(isinstance(n, str) for n in order):
        raise _bad("bad_manifest", MANIFEST, "manifest.json needs a 'load_order' list of table names and a 'tables' "
                   "object", hint=_NOT_OURS)
    if unknown := [name for name in order if name not in tables]:
        raise _bad("bad_manifest", MANIFEST, f"manifest load_order names table(s) {', '.join(map(repr, unknown[:5]))} "
                   "that 'tables' does not describe", hint=_NOT_OURS)
    for name in order:
        entry = tables[name]
        if not isinstance(entry, Mapping) or type(entry.get("rows")) is not int:
            raise _bad("bad_manifest", MANIFEST, f"manifest tables.{name} needs an integer 'rows'", hint=_NOT_OURS)
        if manifest.get("data") != "native":
            member_path(bundle_dir, manifest, entry.get("member"), field=f"tables.{name}.member")


#: Neutral column type → the JSON types its literal default may have (docs/bundle-format.md, the row form).
_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {"integer": (int,), "bigint": (int,), "float": (int, float),
                                               "double": (int, float), "decimal": (int, float), "boolean": (bool,)}


def _check_definitions(bundle_dir: Path, manifest: Mapping[str, Any]) -> None:
    """``schema/tables.json`` must define every table of ``load_order``, with defaults its column types can hold.

    A string default on a numeric column would otherwise fail half-way
    through creating the target's tables (PostgreSQL, MariaDB) or be stored
    as text (SQLite).
    """
    path = member_path(bundle_dir, manifest, "schema/tables.json", field="schema")
    try:
        tables = json.loads(path.read_bytes())
        defined = {table["name"]: table["columns"] for table in tables}
    except (ValueError, TypeError, KeyError):
        raise _bad("bad_schema", "schema/tables.json", "schema/tables.json is not a list of table definitions",
                   hint=_NOT_OURS) from None
    if missing := [name for name in manifest["load_order"] if name not in defined]:
        raise _bad("bad_schema", "schema/tables.json", f"schema/tables.json does not define table(s) "
                   f"{', '.join(map(repr, missing[:5]))} of the manifest's load_order", hint=_NOT_OURS)
    for table, columns in defined.items():
        for column in columns:
            value = (column.get("default") or {}).get("value") if isinstance(column, Mapping) else None
            allowed = _DEFAULT_TYPES.get(column.get("type")) if isinstance(column, Mapping) else None
            if value is None or allowed is None:
                continue
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise _bad("bad_schema", "schema/tables.json", f"schema/tables.json: {table}.{column.get('name')} is "
                           f"{column['type']} but its default is {value!r}", hint=_NOT_OURS)


def check_references(bundle_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Check every member a full bundle's manifest and file index name, before anyone reads or writes.

    Other bundle kinds name no members beyond ``members``, so they pass.
    """
    if manifest.get("kind") != "full":
        return
    bundle_dir = Path(bundle_dir)
    _check_tables(bundle_dir, manifest)
    _check_definitions(bundle_dir, manifest)
    if manifest.get("data") == "native":
        native = manifest.get("native")
        if not isinstance(native, Mapping):
            raise _bad("bad_manifest", MANIFEST, "a native bundle's manifest.json needs a 'native' object",
                       hint=_NOT_OURS)
        member_path(bundle_dir, manifest, native.get("member"), field="native.member", directory=True)
    snapshots = manifest.get("snapshots") or {}
    for key in ("schema", "config"):
        if isinstance(snapshots, Mapping) and snapshots.get(key) is not None:
            member_path(bundle_dir, manifest, snapshots[key], field=f"snapshots.{key}", directory=key == "config")
    used = set(manifest.get("storage_locations_used") or [])
    for _id, storage, *_rest in iter_file_index(bundle_dir, manifest):
        if storage not in used:
            raise _bad("bad_file_index", None, f"files index names location {storage!r}, which "
                       "storage_locations_used does not list", hint=_NOT_OURS)


# -- encryption -----------------------------------------------------------------------------------

def _secret(passphrase: str | bytes | None, key_file: str | os.PathLike[str] | None) -> tuple[bytes, bool] | None:
    """Return (secret bytes, came from a key file), or None when neither is given."""
    if passphrase is not None and key_file is not None:
        raise InvalidInput("give a passphrase or a key file, not both")
    if passphrase is not None:
        secret = unicodedata.normalize("NFC", passphrase).encode("utf-8") if isinstance(passphrase, str) else passphrase
        if not secret:
            raise InvalidInput("the passphrase is empty")
        return secret, False
    if key_file is None:
        return None
    try:
        secret = Path(key_file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read key file {key_file}: {exc.strerror}") from None
    if not secret:
        raise InvalidInput(f"key file {key_file} is empty")
    return secret, True


def _file_key(master: bytes, salt: bytes) -> AESGCM:
    # A per-bundle subkey: one raw key file can encrypt any number of bundles
    # without the random nonce prefixes ever having to be unique across them.
    return AESGCM(HKDF(hashes.SHA256(), 32, salt, _HKDF_INFO).derive(master))


def _scrypt(secret: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log_n, r=r, p=p).derive(secret)


def _nonce_aad(prefix: bytes, header: bytes, counter: int, final: bool) -> tuple[bytes, bytes]:
    return prefix + struct.pack(">I", counter), header + (b"\x01" if final else b"\x00")


class _EncryptWriter:
    """Write-only stream: the header, then 1 MiB plaintext chunks as AES-256-GCM frames, the last one flagged final."""

    def __init__(self, raw: IO[bytes], secret: bytes, from_key_file: bool) -> None:
        salt, self._prefix = os.urandom(16), os.urandom(8)
        if from_key_file and len(secret) == 32:
            kdf, params, master = KDF_RAW, (0, 0, 0), secret
        else:
            kdf, params = KDF_SCRYPT, (SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
            master = _scrypt(secret, salt, *params)
        self._header = _HEADER.pack(MAGIC, ENC_VERSION, CIPHER_AES256GCM, kdf, *params, 0, salt, self._prefix,
                                    CHUNK_SIZE)
        self._aead, self._raw, self._buf, self._counter, self._pos = _file_key(master, salt), raw, bytearray(), 0, 0
        raw.write(self._header)

    def _emit(self, data: bytes, final: bool) -> None:
        if self._counter >= 1 << 32:
            raise MigrateError("bundle too large for one encrypted stream (4 PiB)")
        nonce, aad = _nonce_aad(self._prefix, self._header, self._counter, final)
        self._raw.write(self._aead.encrypt(nonce, data, aad))
        self._counter += 1

    def write(self, data: Any) -> int:
        self._buf += data
        self._pos += len(data)
        while len(self._buf) > CHUNK_SIZE:  # always keep >0 bytes back: close() emits the final frame
            self._emit(bytes(self._buf[:CHUNK_SIZE]), False)
            del self._buf[:CHUNK_SIZE]
        return len(data)

    def tell(self) -> int:  # tarfile and GzipFile ask
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._emit(bytes(self._buf), True)
        self._buf = bytearray()


class _DecryptReader:
    """Read-only stream over an encrypted archive; every frame is authenticated before its bytes are returned."""

    def __init__(self, raw: IO[bytes], header: bytes, secret: tuple[bytes, bool]) -> None:
        _magic, version, cipher, kdf, log_n, r, p, _res, salt, prefix, chunk = _HEADER.unpack(header)
        if version != ENC_VERSION or cipher != CIPHER_AES256GCM:
            raise _bad("unsupported_version", None, f"bundle uses encryption version {version}/cipher {cipher}, "
                       "made by a newer cairn-migrate; upgrade cairn-migrate")
        if not 1024 <= chunk <= 16 << 20:
            raise _bad("bad_header", None, f"encryption header is damaged (chunk size {chunk})")
        if kdf == KDF_RAW:
            if not secret[1] or len(secret[0]) != 32:
                raise _bad("decrypt_failed", None, "cannot decrypt: this bundle was encrypted with a 32-byte key "
                           "file; pass that key file", BundleDecryptError)
            master = secret[0]
        elif kdf == KDF_SCRYPT and 1 <= log_n <= 24 and r >= 1 and 1 <= p <= 4 and 128 * r << log_n <= _MAX_SCRYPT_MEM:
            master = _scrypt(secret[0], salt, log_n, r, p)
        else:
            raise _bad("bad_header", None, f"encryption header is damaged (KDF {kdf}, N=2^{log_n} r={r} p={p})")
        self._aead, self._raw, self._header, self._prefix = _file_key(master, salt), raw, header, prefix
        self._frame = chunk + TAG
        self._next = self._read_frame()
        if not self._next:
            raise _bad("truncated", None, "encrypted bundle is truncated: no data after the header")
        self._counter, self._out, self._pos, self._done = 0, b"", 0, False

    def _read_frame(self) -> bytes:
        parts, want = [], self._frame
        while want and (got := self._raw.read(want)):
            parts.append(got)
            want -= len(got)
        return b"".join(parts)

    def _open(self, frame: bytes, final: bool) -> bytes:
        nonce, aad = _nonce_aad(self._prefix, self._header, self._counter, final)
        return self._aead.decrypt(nonce, frame, aad)

    def _advance(self) -> None:
        # One frame of look-ahead: a frame is final iff nothing follows it.
        frame = self._next
        self._next = self._read_frame() if len(frame) == self._frame else b""
        final = not self._next
        try:
            self._out = self._open(frame, final)
        except InvalidTag:
            if final:
                with suppress(InvalidTag):  # authentic as non-final, yet last: the final frame was cut off
                    self._open(frame, False)
                    raise _bad("truncated", None, "encrypted bundle is truncated: the final chunk is missing")
            raise _bad("decrypt_failed", None, "cannot decrypt: wrong passphrase or key file, or the bundle was "
                       "modified" if self._counter == 0 else f"cannot decrypt chunk {self._counter}: the bundle was "
                       "modified or truncated", BundleDecryptError) from None
        self._counter += 1
        self._done = final

    def read(self, size: int = -1) -> bytes:
        # tarfile reads 10 KiB at a time: hand out slices by offset, never re-copy the chunk's tail.
        while self._pos >= len(self._out) and not self._done:
            self._advance()
            self._pos = 0
        end = len(self._out) if size < 0 else min(len(self._out), self._pos + size)
        out, self._pos = self._out[self._pos:end], end
        return out


class _HashingReader:
    def __init__(self, raw: IO[bytes], digest: Any) -> None:
        self._raw, self._digest = raw, digest

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._digest.update(data)
        return data


class _Prefixed:
    """Put already-peeked bytes back in front of a stream."""

    def __init__(self, prefix: bytes, raw: Any) -> None:
        self._prefix, self._raw = prefix, raw

    def read(self, size: int = -1) -> bytes:
        if not self._prefix:
            return self._raw.read(size)
        out = self._prefix if size < 0 or size >= len(self._prefix) else self._prefix[:size]
        self._prefix = self._prefix[len(out):]
        return out


# -- pack -----------------------------------------------------------------------------------------

def is_archive_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an archive bundle (by its suffix) or a directory bundle (no suffix).

    :raises InvalidInput: any other suffix: ``-o b.zip`` must not quietly become a directory.
    """
    name = Path(path).name
    if name.removesuffix(".enc").endswith((".tar.gz", ".tgz", ".tar")):
        return True
    if not Path(name).suffix:
        return False
    raise InvalidInput(f"{name!r} is not a bundle name cairn-migrate knows",
                       hint="name a directory bundle without a suffix, or an archive .tar, .tar.gz or .tar.gz.enc")


def _compression_for(name: str) -> str:
    base = name.removesuffix(".enc")
    if base.endswith((".tar.gz", ".tgz", ".tar")):
        return "none" if base.endswith(".tar") else "gzip"
    raise InvalidInput(f"cannot tell the archive type from {name!r}: use .tar, .tar.gz or .tgz (+ .enc), "
                       "or pass compress='none'/'gzip'")


def pack(bundle_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
         passphrase: str | bytes | None = None, key_file: str | os.PathLike[str] | None = None,
         compress: str | None = None, compresslevel: int = DEFAULT_GZIP_LEVEL) -> Path:
    """Write the directory bundle as one archive: manifest.json first, then the members in manifest order.

    Members are verified against the manifest while they are copied (one read
    of each file), so a bundle damaged on disk is never packed; the archive
    appears at ``out_path`` only when complete (``.part`` file + rename).
    """
    bundle_dir, out_path = Path(bundle_dir), Path(out_path)
    secret = _secret(passphrase, key_file)
    compress = compress or _compression_for(out_path.name)
    if compress not in ("none", "gzip"):
        raise InvalidInput(f"compress must be 'none' or 'gzip', not {compress!r}")
    if secret is None and out_path.name.endswith(".enc"):
        raise InvalidInput(f"{out_path.name} ends in .enc but no passphrase or key file was given",
                           hint="give a passphrase or key file (--passphrase-file, --key-file or CAIRN_MIGRATE_PASSPHRASE), "
                                "or name the archive without .enc")
    if secret is not None and not out_path.name.endswith(".enc"):
        log.warning("%s is encrypted; name it *.enc so people know", out_path.name)
    manifest = read_manifest(bundle_dir)
    manifest_raw = (bundle_dir / MANIFEST).read_bytes()
    _scan(bundle_dir, manifest["members"])
    tmp = out_path.with_name(out_path.name + ".part")
    try:
        with open(tmp, "wb") as raw:
            enc = _EncryptWriter(raw, *secret) if secret else None
            sink: Any = enc or raw
            with (gzip.GzipFile(filename="", fileobj=sink, mode="wb", compresslevel=compresslevel, mtime=0)
                  if compress == "gzip" else nullcontext(sink)) as tar_sink, \
                    tarfile.open(fileobj=tar_sink, mode="w", format=tarfile.PAX_FORMAT, copybufsize=BUF) as tar:
                _add(tar, MANIFEST, io.BytesIO(manifest_raw), len(manifest_raw))
                for name, entry in manifest["members"].items():
                    digest = hashlib.sha256()
                    with open(bundle_dir / name, "rb") as src:
                        _add(tar, name, _HashingReader(src, digest), entry["size"])
                    if digest.hexdigest() != entry["sha256"]:
                        raise _bad("checksum", name, f"checksum mismatch for {name!r} while packing (sha256 differs "
                                   "from the manifest)")
                    tar.members.clear()  # constant memory for bundles with millions of files
            if enc:
                enc.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("packed %s (%d members) into %s", bundle_dir, len(manifest["members"]), out_path)
    return out_path


def _add(tar: tarfile.TarFile, name: str, src: Any, size: int) -> None:
    # Fixed owner, mode and mtime: the same bundle packs to the same tar bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    try:
        tar.addfile(info, src)
    except OSError as exc:
        if "unexpected end of data" not in str(exc):
            raise
        raise _bad("size", name, f"{name!r} shrank while being packed") from None


# -- unpack ---------------------------------------------------------------------------------------

def unpack(archive_path: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *,
           passphrase: str | bytes | None = None, key_file: str | os.PathLike[str] | None = None) -> Path:
    """Extract and verify an archive into ``dest_dir`` (empty or absent); return ``dest_dir``.

    One streaming pass.  On any failure everything extracted is removed
    (``dest_dir`` is left as found) and BundleError names the member and the
    rule; manifest.json is written last, so even a killed process never leaves
    something that validates as a bundle.
    """
    archive_path, dest = Path(archive_path), Path(dest_dir)
    if not archive_path.is_file():
        raise NotFound(f"bundle archive {archive_path} does not exist")
    secret = _secret(passphrase, key_file)
    existed = dest.exists()
    if existed and (not dest.is_dir() or any(dest.iterdir())):
        raise _bad("dest_not_empty", None, f"destination {dest} must be empty or not exist")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with open(archive_path, "rb") as raw:
            _extract(raw, dest, secret)
    except BaseException:
        if not existed:
            shutil.rmtree(dest, ignore_errors=True)
        for child in dest.iterdir() if existed else ():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise
    log.info("unpacked %s into %s", archive_path, dest)
    return dest


def _extract(raw: IO[bytes], dest: Path, secret: tuple[bytes, bool] | None) -> None:
    head = raw.read(HEADER_SIZE)
    stream: Any
    if head.startswith(MAGIC):
        if secret is None:
            raise _bad("passphrase_required", None, "this bundle is encrypted; pass the passphrase (or key file) it "
                       "was encrypted with", BundlePassphraseRequired)
        if len(head) < HEADER_SIZE:
            raise _bad("truncated", None, "encrypted bundle is truncated inside its header")
        stream = _DecryptReader(raw, head, secret)
    else:
        if secret is not None:
            log.warning("bundle is not encrypted; ignoring the passphrase/key file")
        stream = _Prefixed(head, raw)
    magic = stream.read(2)  # compression is detected by content, like encryption
    stream = _Prefixed(magic, stream)
    at = {"member": MANIFEST}
    try:
        with (gzip.GzipFile(fileobj=stream, mode="rb") if magic == b"\x1f\x8b" else nullcontext(stream)) as plain, \
                tarfile.open(fileobj=plain, mode="r|") as tar:
            _extract_members(tar, dest, at)
            at["member"] = "(end of archive)"
            while block := tar.fileobj.read(BUF):  # drain: checks the gzip CRC and the final encrypted chunk
                if block.count(0) != len(block):
                    raise _bad("trailing_data", None, "unexpected data after the end of the tar archive (damaged "
                               "header?)")
    except EOFError:
        raise _bad("truncated", at["member"], f"archive is truncated: the compressed stream ends early (at "
                   f"{at['member']!r})") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _bad("damaged", at["member"], f"compressed stream is damaged (at {at['member']!r}): {exc}") from None
    except tarfile.ReadError as exc:
        rule, what = (("truncated", "archive is truncated") if "end of data" in str(exc) or "empty file" in str(exc)
                      else ("not_tar", "not a bundle archive (tar)"))
        raise _bad(rule, at["member"], f"{what} (at {at['member']!r}): {exc}") from None
    except tarfile.TarError as exc:
        raise _bad("damaged", at["member"], f"damaged tar archive (at {at['member']!r}): {exc}") from None
    except OSError as exc:
        raise MigrateError(f"cannot write {at['member']!r} into {dest}: {exc.strerror or exc}") from None


_KINDS = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo",
          tarfile.DIRTYPE: "directory", tarfile.CONTTYPE: "contiguous file", tarfile.GNUTYPE_SPARSE: "sparse file"}


def _extract_members(tar: tarfile.TarFile, dest: Path, at: dict[str, str]) -> None:
    first = tar.next()
    if first is None:
        raise _bad("manifest_missing", MANIFEST, "manifest.json is missing: the archive is empty")
    if first.name != MANIFEST or first.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        later = first.name == MANIFEST  # error path only: scan on to tell "not first" from "missing"
        while not later and (ti := tar.next()) is not None:
            later = ti.name == MANIFEST
            tar.members.clear()
        if later:
            raise _bad("manifest_not_first", MANIFEST, f"manifest.json must be the first member, as a regular file "
                       f"(first is {first.name!r})")
        raise _bad("manifest_missing", MANIFEST, "manifest.json is missing from the archive")
    if first.size > MAX_MANIFEST_BYTES:
        raise _bad("bad_manifest", MANIFEST, "manifest.json is too large")
    manifest_raw = tar.extractfile(first).read()  # type: ignore[union-attr]
    members: dict[str, dict[str, Any]] = parse_manifest(manifest_raw)["members"]
    if (total := sum(e["size"] for e in members.values())) > (free := shutil.disk_usage(dest).free):
        raise _bad("disk_space", None, f"bundle needs {total} bytes but {dest} has {free} free")
    done: set[str] = set()
    while (ti := tar.next()) is not None:
        tar.members.clear()
        name = at["member"] = check_relpath(ti.name)
        if ti.issym() or ti.islnk():
            raise _bad("link", name, f"member {name!r} is a {'symlink' if ti.issym() else 'hardlink'}; only "
                       "regular files are allowed")
        if ti.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or ti.sparse:
            kind = "sparse file" if ti.sparse else _KINDS.get(ti.type, f"tar type {ti.type!r}")
            raise _bad("special_file", name, f"member {name!r} is not a regular file but a {kind}")
        if name in done or name == MANIFEST:
            raise _bad("duplicate", name, f"duplicate member {name!r}")
        if name not in members:
            raise _bad("unlisted", name, f"member {name!r} is not listed in the manifest")
        if ti.size != members[name]["size"]:
            raise _bad("size", name, f"size mismatch for {name!r}: {ti.size} bytes in the archive, manifest says "
                       f"{members[name]['size']}")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        src, digest = tar.extractfile(ti), hashlib.sha256()
        try:
            with open(dest / name, "xb") as out:
                while block := src.read(BUF):  # type: ignore[union-attr]
                    digest.update(block)
                    out.write(block)
        except FileExistsError:
            raise _bad("duplicate", name, f"member {name!r} collides with another member (case-insensitive "
                       "filesystem?)") from None
        if digest.hexdigest() != members[name]["sha256"]:
            raise _bad("checksum", name, f"checksum mismatch for {name!r} (sha256 differs from the manifest)")
        done.add(name)
    for name in members.keys() - done:
        raise _bad("missing_member", name, f"member {name!r} is listed in the manifest but missing from the "
                   "archive (truncated archive?)")
    (dest / (MANIFEST + ".tmp")).write_bytes(manifest_raw)
    os.replace(dest / (MANIFEST + ".tmp"), dest / MANIFEST)


@contextmanager
def open_bundle(path: str | os.PathLike[str], *, passphrase: str | bytes | None = None,
                key_file: str | os.PathLike[str] | None = None,
                workdir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a validated bundle directory: a directory in place, an archive unpacked into a temp dir removed on exit.

    Validated means the container rules and :func:`check_references`: every
    member the manifest or file index names lies inside the bundle.
    """
    path = Path(path)
    if path.is_dir():
        check_references(path, validate_directory(path))
        yield path
        return
    if not path.exists():
        raise NotFound(f"bundle {path} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix="cairn-bundle-", dir=workdir))
    try:
        bundle_dir = unpack(path, tmp / "bundle", passphrase=passphrase, key_file=key_file)
        check_references(bundle_dir, read_manifest(bundle_dir))
        yield bundle_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
