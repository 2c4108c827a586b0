"""The bundle container: round trips, constant memory, and one corrupt bundle per hardening rule."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import uuid
from pathlib import Path

import pytest

from cairn_migrate.bundle import bundle
from cairn_migrate.bundle.bundle import (
    FORMAT,
    MAGIC,
    BundleDecryptError,
    BundleDirWriter,
    BundleError,
    BundlePassphraseRequired,
    open_bundle,
    pack,
    unpack,
    validate_directory,
)
from cairn_migrate.errors import InvalidInput

PASS = "correct horse battery staple"
BIG = os.urandom(2 * bundle.CHUNK_SIZE + 12345)  # spans three encrypted chunks


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap KDF for the corpus; the round trip test restores the real cost."""
    monkeypatch.setattr(bundle, "SCRYPT_LOG_N", 12)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_bundle(root: Path, *, big: bool = False) -> Path:
    writer = BundleDirWriter(root)
    writer.add_bytes("tables/directus_files.jsonl", b'{"id": "a1", "filename_disk": "a1.jpg"}\n' * 50)
    writer.add_bytes("tables/empty.jsonl", b"")
    writer.add_bytes("schema/snapshot.yaml", b"version: 1\ncollections: []\n")
    with writer.open("files/local/a1.jpg") as fh:
        fh.write(b"\xff\xd8jpeg" * 1000)
    writer.add_file("files/local/sub/dir/caf\u00e9.png", io.BytesIO(b"png" * 7))
    if big:
        writer.add_bytes("files/local/big.bin", BIG)
    writer.write_manifest({"source": {"vendor": "sqlite"}})
    return root


def manifest_bytes(members: dict[str, bytes], **override: object) -> bytes:
    manifest = {"format": FORMAT, "format_version": 1,
                "members": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members.items()}}
    manifest.update(override)
    return json.dumps(manifest).encode()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def build_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = False) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(raw.getvalue()) if gz else raw.getvalue())
    return path


GOOD = {"tables/a.jsonl": b'{"id": 1}\n' * 100, "files/local/x.bin": b"x" * 3000}


def good_entries(**override: object) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [reg("manifest.json", manifest_bytes(GOOD, **override))] + [reg(n, d) for n, d in GOOD.items()]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Everything an unpack may touch lives under work/; tests check nothing else appears there."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def assert_rejected(archive: Path, work: Path, rule_words: str, **kw: object) -> BundleError:
    dest = work / "dest"
    with pytest.raises(BundleError) as info:
        unpack(archive, dest, **kw)
    assert rule_words.lower() in str(info.value).lower(), str(info.value)
    assert not dest.exists()
    assert list(work.iterdir()) == []  # nothing written beside dest (e.g. ../x)
    return info.value


# -- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kw", [
    ("clone.tar", {}),
    ("clone.tar.gz", {}),
    ("clone.tgz", {}),
    ("clone.tar.gz.enc", {"passphrase": PASS}),
    ("clone.tar.enc", {"key_file": "raw"}),
    ("clone.tar.gz.enc", {"key_file": "text"}),
])
def test_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, kw: dict) -> None:
    monkeypatch.setattr(bundle, "SCRYPT_LOG_N", 17)
    src = make_bundle(tmp_path / "src", big=True)
    if kw.get("key_file"):
        key = tmp_path / "key"
        key.write_bytes(os.urandom(32) if kw["key_file"] == "raw" else b"a text key file\n")
        kw = {"key_file": key}
    archive = pack(src, tmp_path / name, **kw)
    assert not list(tmp_path.glob("*.part"))
    head = archive.read_bytes()[:8]
    assert head.startswith(MAGIC) == name.endswith(".enc")
    dest = unpack(archive, tmp_path / "dest", **kw)
    assert tree(dest) == tree(src)
    assert validate_directory(dest) == json.loads((src / "manifest.json").read_bytes())


def test_archive_layout_manifest_first_then_manifest_order(tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    archive = pack(src, tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names == ["manifest.json", *json.loads((src / "manifest.json").read_bytes())["members"]]


def test_encryption_detected_by_magic_not_name(tmp_path: Path) -> None:
    archive = pack(make_bundle(tmp_path / "src"), tmp_path / "b.tar.gz.enc", passphrase=PASS)
    disguised = archive.rename(tmp_path / "b.tar")
    assert tree(unpack(disguised, tmp_path / "dest", passphrase=PASS)) == tree(tmp_path / "src")


def test_open_bundle_directory_and_archive(tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    with open_bundle(src) as path:
        assert path == src
    archive = pack(src, tmp_path / "b.tar.gz.enc", passphrase=PASS)
    (tmp_path / "wd").mkdir()
    with open_bundle(archive, passphrase=PASS, workdir=tmp_path / "wd") as path:
        assert tree(path) == tree(src)
    assert list((tmp_path / "wd").iterdir()) == []


def test_unpack_refuses_non_empty_dest(tmp_path: Path) -> None:
    archive = pack(make_bundle(tmp_path / "src"), tmp_path / "b.tar")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    with pytest.raises(BundleError, match="empty"):
        unpack(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_text() == "mine"


def test_failure_into_existing_empty_dest_leaves_it_empty(tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "b.tar", good_entries() + [reg("tables/extra.jsonl", b"{}")])
    (tmp_path / "dest").mkdir()
    with pytest.raises(BundleError, match="not listed"):
        unpack(archive, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_pack_refuses_damaged_directory_and_leaves_no_output(tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    (src / "files/local/a1.jpg").write_bytes(b"\xff\xd8JPEG" * 1000)  # same size, other bytes
    for name, kw in (("b.tar", {}), ("b.tar.gz.enc", {"passphrase": PASS})):
        with pytest.raises(BundleError, match="checksum mismatch for 'files/local/a1.jpg'"):
            pack(src, tmp_path / name, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_pack_member_shrinks_while_packing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_bundle(tmp_path / "src")
    monkeypatch.setattr(bundle, "_scan", lambda *a: (src / "tables/directus_files.jsonl").write_bytes(b"{}"))
    with pytest.raises(BundleError, match="shrank"):
        pack(src, tmp_path / "b.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_pack_refuses_enc_name_without_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=".enc"):
        pack(make_bundle(tmp_path / "src"), tmp_path / "b.tar.enc")


def test_writer_rules(tmp_path: Path) -> None:
    writer = BundleDirWriter(tmp_path / "b")
    for bad in ("../x", "/abs", "a\\b", "C:/x", "a//b", "a/./b", "nul\x00", "cafe\u0301", ""):
        with pytest.raises(BundleError, match="unsafe member path"):
            writer.open(bad).__enter__()
    writer.add_bytes("a", b"1")
    with pytest.raises(InvalidInput, match="twice"):
        writer.add_bytes("a", b"2")
    with pytest.raises(RuntimeError), writer.open("half") as fh:
        fh.write(b"partial")
        raise RuntimeError("export failed")
    assert not (tmp_path / "b" / "half").exists() and "half" not in writer.members
    writer.write_manifest({"note": "x"})
    entry = {"size": 1, "sha256": hashlib.sha256(b"1").hexdigest()}
    assert validate_directory(tmp_path / "b")["members"] == {"a": entry}


# -- memory -----------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import os, resource, sys, time
    from pathlib import Path
    from cairn_migrate.bundle.bundle import BundleDirWriter, pack, unpack
    root, size = Path(sys.argv[1]), int(sys.argv[2])
    key = root / "key"; key.write_bytes(os.urandom(32))
    block = b"".join(b'{"id": %d, "uuid": "%s", "title": "row"}\\n' % (i, os.urandom(8).hex().encode())
                     for i in range(20000))[: 1 << 20]
    def status(field):  # VmHWM is per address space, so unlike ru_maxrss it does not inherit the parent's peak
        try:
            return int(Path("/proc/self/status").read_text().split(field + ":")[1].split()[0]) * 1024
        except (OSError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    current, peak = (lambda: status("VmRSS")), (lambda: status("VmHWM"))
    base = current()
    hog = b"x" * int(os.environ.get("HOG", "0"))  # self-test: HOG=100000000 must fail the assertion
    writer = BundleDirWriter(root / "src")
    with writer.open("files/local/big.bin") as fh:
        for _ in range(size >> 20):
            fh.write(block)
    writer.write_manifest({})
    t0 = time.perf_counter(); pack(root / "src", root / "b.tar.gz.enc", key_file=key); t1 = time.perf_counter()
    unpack(root / "b.tar.gz.enc", root / "dest", key_file=key); t2 = time.perf_counter()
    print(size, base, peak(), t1 - t0, t2 - t1, (root / "b.tar.gz.enc").stat().st_size)
""")


def test_pack_unpack_200mb_in_constant_memory(tmp_path: Path) -> None:
    size = 200 << 20
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), str(size)],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    _, base, peak, t_pack, t_unpack, archive_size = map(float, out)
    growth = (peak - base) / 2**20
    print(f"\nRSS growth {growth:.1f} MiB; pack {size / 2**20 / t_pack:.0f} MiB/s, unpack "
          f"{size / 2**20 / t_unpack:.0f} MiB/s (gzip-1 + AES-GCM, ratio {archive_size / size:.2f})")
    assert growth < 50
    assert (tmp_path / "dest/files/local/big.bin").stat().st_size == size


# -- corrupt archives: one per rule -----------------------------------------------------------------

EVIL = f"/tmp/cairn-evil-{uuid.uuid4().hex}"

CORPUS = {
    "traversal": (good_entries() + [reg("../x", b"evil")], "path traversal"),
    "traversal_nested": (good_entries() + [reg("tables/../../x", b"evil")], "path traversal"),
    "absolute": (good_entries() + [reg(EVIL, b"evil")], "absolute path"),
    "drive_letter": (good_entries() + [reg("C:/x", b"evil")], "drive letter"),
    "backslash": (good_entries() + [reg("..\\x", b"evil")], "backslash"),
    "symlink": (good_entries() + [special("files/local/link", tarfile.SYMTYPE, "/etc/passwd")], "symlink"),
    "hardlink": (good_entries() + [special("files/local/hard", tarfile.LNKTYPE, "tables/a.jsonl")], "hardlink"),
    "device": (good_entries() + [special("files/local/dev", tarfile.CHRTYPE)], "not a regular file"),
    "fifo": (good_entries() + [special("files/local/fifo", tarfile.FIFOTYPE)], "not a regular file"),
    "directory": (good_entries() + [special("files/local/d", tarfile.DIRTYPE)], "not a regular file"),
    "duplicate": (good_entries() + [reg("tables/a.jsonl", GOOD["tables/a.jsonl"])], "duplicate member"),
    "duplicate_manifest": (good_entries() + [reg("manifest.json", b"{}")], "duplicate member"),
    "unlisted": (good_entries() + [reg("tables/extra.jsonl", b"{}")], "not listed in the manifest"),
    "manifest_not_first": ([reg(n, d) for n, d in GOOD.items()] + [reg("manifest.json", manifest_bytes(GOOD))],
                           "must be the first member"),
    "manifest_missing": ([reg(n, d) for n, d in GOOD.items()], "manifest.json is missing"),
    "empty_archive": ([], "manifest.json is missing"),
    "manifest_not_json": ([reg("manifest.json", b"{not json")] + good_entries()[1:], "not valid UTF-8 JSON"),
    "manifest_lists_traversal": ([reg("manifest.json", manifest_bytes({"../x": b"e"}))], "path traversal"),
    "unknown_format": (good_entries(format="tarball-of-something"), "unknown bundle format"),
    "future_version": (good_entries(format_version=3), "format_version 3 was made by a newer cairn-migrate; upgrade"),
    "checksum": ([reg("manifest.json", manifest_bytes(GOOD))] + [reg("tables/a.jsonl", b"Z" * 1000),
                                                                 reg("files/local/x.bin", GOOD["files/local/x.bin"])],
                 "checksum mismatch for 'tables/a.jsonl'"),
    "size": ([reg("manifest.json", manifest_bytes(GOOD))] + [reg("tables/a.jsonl", b"short"),
                                                             reg("files/local/x.bin", GOOD["files/local/x.bin"])],
             "size mismatch for 'tables/a.jsonl'"),
    "listed_missing": (good_entries()[:2], "'files/local/x.bin' is listed in the manifest but missing"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tgz"])
def test_corrupt_archive(case: str, gz: bool, tmp_path: Path, work: Path) -> None:
    entries, words = CORPUS[case]
    archive = build_tar(tmp_path / ("b.tar.gz" if gz else "b.tar"), entries, gz=gz)
    error = assert_rejected(archive, work, words)
    assert error.rule and error.to_dict()["code"] == "bad_bundle"
    assert not Path(EVIL).exists() and not (tmp_path / "x").exists()


def test_truncated_tar(tmp_path: Path, work: Path) -> None:
    data = pack(make_bundle(tmp_path / "src", big=True), tmp_path / "b.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    assert_rejected(cut, work, "truncated")


def test_truncated_gzip(tmp_path: Path, work: Path) -> None:
    data = pack(make_bundle(tmp_path / "src", big=True), tmp_path / "b.tar.gz").read_bytes()
    for n, cut_at in enumerate((len(data) // 2, len(data) - 4)):  # mid-stream; only the CRC trailer cut
        cut = tmp_path / f"cut{n}.tar.gz"
        cut.write_bytes(data[:cut_at])
        assert_rejected(cut, work, "truncated")


def test_trailing_garbage_after_tar(tmp_path: Path, work: Path) -> None:
    archive = build_tar(tmp_path / "b.tar", good_entries())
    archive.write_bytes(archive.read_bytes() + b"\x01" * 512)
    assert_rejected(archive, work, "unexpected data after the end")


def test_not_an_archive(tmp_path: Path, work: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello, this is not a tar file at all\n" * 40)
    assert_rejected(junk, work, "not a bundle archive")


# -- corrupt encrypted archives ---------------------------------------------------------------------

@pytest.fixture
def encrypted(tmp_path: Path) -> bytes:
    return pack(make_bundle(tmp_path / "src", big=True), tmp_path / "b.tar.enc", passphrase=PASS).read_bytes()


def write(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "bad.tar.enc").write_bytes(data)
    return tmp_path / "bad.tar.enc"


def test_encrypted_last_chunk_dropped(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    frame = bundle.CHUNK_SIZE + bundle.TAG
    whole = (len(encrypted) - bundle.HEADER_SIZE) // frame
    assert whole >= 2
    cut = write(tmp_path, encrypted[: bundle.HEADER_SIZE + whole * frame])
    assert assert_rejected(cut, work, "final chunk is missing", passphrase=PASS).rule == "truncated"


def test_encrypted_cut_mid_chunk(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    assert_rejected(write(tmp_path, encrypted[:-100]), work, "cannot decrypt", passphrase=PASS)


def test_encrypted_chunks_reordered(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    h, f = bundle.HEADER_SIZE, bundle.CHUNK_SIZE + bundle.TAG
    swapped = encrypted[:h] + encrypted[h + f: h + 2 * f] + encrypted[h: h + f] + encrypted[h + 2 * f:]
    assert_rejected(write(tmp_path, swapped), work, "cannot decrypt", passphrase=PASS)


@pytest.mark.parametrize("where", ["header_salt", "first_chunk", "middle", "last_byte"])
def test_encrypted_flipped_byte(where: str, encrypted: bytes, tmp_path: Path, work: Path) -> None:
    pos = {"header_salt": 20, "first_chunk": bundle.HEADER_SIZE + 5, "middle": len(encrypted) // 2,
           "last_byte": len(encrypted) - 1}[where]
    data = bytearray(encrypted)
    data[pos] ^= 0x01
    error = assert_rejected(write(tmp_path, bytes(data)), work, "cannot decrypt", passphrase=PASS)
    assert isinstance(error, BundleDecryptError)


def test_encrypted_wrong_passphrase(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    error = assert_rejected(write(tmp_path, encrypted), work,
                            "cannot decrypt: wrong passphrase or key file, or the bundle was modified",
                            passphrase="wrong")
    assert error.to_dict()["code"] == "decrypt_failed"


def test_encrypted_no_passphrase(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    error = assert_rejected(write(tmp_path, encrypted), work, "this bundle is encrypted; pass the passphrase")
    assert isinstance(error, BundlePassphraseRequired)


def test_encrypted_with_raw_key_needs_that_key(tmp_path: Path, work: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    archive = pack(make_bundle(tmp_path / "src"), tmp_path / "b.tar.enc", key_file=key)
    assert_rejected(archive, work, "32-byte key file", passphrase=PASS)
    other = tmp_path / "other"
    other.write_bytes(os.urandom(32))
    assert_rejected(archive, work, "wrong passphrase or key file", key_file=other)


def test_encrypted_header_truncated(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    assert_rejected(write(tmp_path, encrypted[:20]), work, "truncated", passphrase=PASS)
    assert_rejected(write(tmp_path, encrypted[: bundle.HEADER_SIZE]), work, "truncated", passphrase=PASS)


# -- corrupt directory bundles ----------------------------------------------------------------------

def damage_extra(root: Path) -> None:
    (root / "tables/extra.jsonl").write_bytes(b"{}")


def damage_symlink(root: Path) -> None:
    (root / "files/local/link").symlink_to("/etc/passwd")


def damage_symlinked_dir(root: Path) -> None:
    (root / "files/other").symlink_to(root / "tables")


def damage_checksum(root: Path) -> None:
    (root / "schema/snapshot.yaml").write_bytes(b"version: 2\ncollections: []\n")


def damage_size(root: Path) -> None:
    (root / "schema/snapshot.yaml").write_bytes(b"version: 1\n")


def damage_missing(root: Path) -> None:
    (root / "files/local/a1.jpg").unlink()


def damage_manifest(root: Path) -> None:
    (root / "manifest.json").unlink()


def damage_fifo(root: Path) -> None:
    os.mkfifo(root / "files/local/pipe")


def damage_version(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_bytes())
    (root / "manifest.json").write_text(json.dumps(manifest | {"format_version": 7}))


@pytest.mark.parametrize("damage, words", [
    (damage_extra, "'tables/extra.jsonl' is not listed in the manifest"),
    (damage_symlink, "'files/local/link' is a symlink"),
    (damage_symlinked_dir, "'files/other' is a symlink"),
    (damage_checksum, "checksum mismatch for 'schema/snapshot.yaml'"),
    (damage_size, "size mismatch for 'schema/snapshot.yaml'"),
    (damage_missing, "'files/local/a1.jpg' is listed in the manifest but missing"),
    (damage_manifest, "manifest.json is missing"),
    (damage_fifo, "not a regular file"),
    (damage_version, "format_version 7 was made by a newer cairn-migrate"),
], ids=lambda v: v.__name__.removeprefix("damage_") if callable(v) else "words")
def test_corrupt_directory(damage, words: str, tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    validate_directory(root)
    damage(root)
    with pytest.raises(BundleError) as info:
        validate_directory(root)
    assert words in str(info.value)
    with pytest.raises(BundleError), open_bundle(root):
        pass


def test_encrypted_data_appended(encrypted: bytes, tmp_path: Path, work: Path) -> None:
    for junk in (b"x", os.urandom(bundle.CHUNK_SIZE + bundle.TAG)):
        assert_rejected(write(tmp_path, encrypted + junk), work, "cannot decrypt", passphrase=PASS)


# -- manifests and file indexes that point outside the bundle -----------------------------------------
# The container rules above make every member safe; a full bundle's manifest and file index also *name*
# members.  Each case below was imported (rows and bytes read from the host's disk) before these rules.

FILE_ID = "11111111-2222-4333-8444-555555555555"
PNG = b"\x89PNG" + b"p" * 300
HOST = b'[1, "read from the host"]\n'


def full_bundle(root: Path, override: dict | None = None, *, index: list[list[object]] | None = None,
                definitions: list[dict] | None = None) -> Path:
    """A small full bundle: one table, one file (plus what ``index``/``tables`` replace), manifest ``override``."""
    writer = BundleDirWriter(root)
    columns = [{"name": "id", "type": "integer", "nullable": False}, {"name": "title", "type": "string"}]
    writer.add_bytes("schema/tables.json", json.dumps(definitions or [{"name": "things", "columns": columns}]).encode())
    writer.add_bytes("tables/things.jsonl", b'[1, "one"]\n')
    writer.add_bytes(f"files/local/{FILE_ID}.png", PNG)
    writer.add_bytes(f"files/local/{FILE_ID}__7e91c5e2d2.webp", b"webp")
    if index is None:
        index = [[FILE_ID, "local", f"{FILE_ID}.png", len(PNG), hashlib.sha256(PNG).hexdigest()]]
    writer.add_bytes("files/index.jsonl", b"".join(json.dumps(entry).encode() + b"\n" for entry in index))
    writer.add_bytes("snapshot/schema-snapshot.yaml", b"version: 1\n")
    manifest = {"kind": "full", "data": "neutral", "source": {"vendor": "sqlite"}, "load_order": ["things"],
                "tables": {"things": {"rows": 1, "member": "tables/things.jsonl"}}, "storage_locations_used": ["local"],
                "files": {"count": len(index), "bytes": len(PNG), "member": "files/index.jsonl", "missing": []},
                "snapshots": {"schema": "snapshot/schema-snapshot.yaml"}}
    writer.write_manifest(manifest | (override or {}))
    return root


def _entry(filename_disk: object, data: bytes = PNG, storage: object = "local") -> list[list[object]]:
    return [[FILE_ID, storage, filename_disk, len(data), hashlib.sha256(data).hexdigest()]]


REFERENCE_CORPUS = {
    "table_member_absolute": ({"tables": {"things": {"rows": 1, "member": "{host}"}}}, "points outside the bundle"),
    "table_member_traversal": ({"tables": {"things": {"rows": 1, "member": "../host.jsonl"}}},
                               "points outside the bundle"),
    "table_member_unlisted": ({"tables": {"things": {"rows": 1, "member": "tables/other.jsonl"}}},
                              "which is not a member of the bundle"),
    "table_member_missing": ({"tables": {"things": {"rows": 1}}}, "tables.things.member points outside"),
    "files_member_absolute": ({"files": {"count": 1, "bytes": 1, "member": "{host}", "missing": []}},
                              "files.member points outside the bundle"),
    "native_member_absolute": ({"data": "native", "native": {"vendor": "sqlite", "member": "{host}"}},
                               "native.member points outside the bundle"),
    "snapshot_absolute": ({"snapshots": {"schema": "{host}"}}, "snapshots.schema points outside the bundle"),
    "load_order_unknown_table": ({"load_order": ["things", "ghosts"]}, "load_order names table(s) 'ghosts'"),
    "schema_lacks_table": ({"load_order": ["things", "ghosts"], "tables": {
        "things": {"rows": 1, "member": "tables/things.jsonl"}, "ghosts": {"rows": 1, "member": "tables/things.jsonl"}}},
        "does not define table(s) 'ghosts'"),
    "index_traversal": ({"index": _entry("../../../host.bin", HOST)}, "not a CairnCMS filename_disk"),
    "index_absolute": ({"index": _entry("{host}", HOST)}, "not a CairnCMS filename_disk"),
    "index_backslash": ({"index": _entry("..\\host.bin", HOST)}, "not a CairnCMS filename_disk"),
    "index_dot_inside": ({"index": _entry(f"a/../{FILE_ID}.png")}, "not a CairnCMS filename_disk"),
    "index_too_long": ({"index": _entry("a" * 256)}, "at most 255 characters"),
    "index_storage_traversal": ({"index": _entry(f"{FILE_ID}.png", storage="..")}, "not a STORAGE_LOCATIONS entry"),
    "index_storage_nested": ({"index": _entry(f"{FILE_ID}.png", storage="local/..")}, "not a STORAGE_LOCATIONS entry"),
    "index_not_listed": ({"index": _entry(f"{FILE_ID}.gif")}, "is not a member of the bundle with the size and sha256"),
    "index_wrong_sha256": ({"index": _entry(f"{FILE_ID}.png", PNG + b"x")}, "with the size and sha256 the index gives"),
    "index_bad_id": ({"index": [["../x", "local", f"{FILE_ID}.png", len(PNG), hashlib.sha256(PNG).hexdigest()]]},
                     "is not a UUID"),
    "index_unused_location": ({"storage_locations_used": ["s3"]}, "which storage_locations_used does not list"),
    "string_default_on_integer": ({"tables_json": [{"name": "things", "columns": [
        {"name": "id", "type": "integer", "default": {"value": "abc"}}, {"name": "title", "type": "string"}]}]},
        "things.id is integer but its default is 'abc'"),
}


def _with_host(value: object, host: str) -> object:
    """``value`` with every ``{host}`` replaced by the host file's absolute path."""
    return json.loads(json.dumps(value).replace("{host}", host))


@pytest.mark.parametrize("case", sorted(REFERENCE_CORPUS))
@pytest.mark.parametrize("form", ["directory", "tar"])
def test_manifest_pointing_outside(case: str, form: str, tmp_path: Path) -> None:
    host = tmp_path / "host.bin"
    host.write_bytes(HOST)
    override, words = REFERENCE_CORPUS[case]
    override = _with_host(override, str(host))
    index, definitions = override.pop("index", None), override.pop("tables_json", None)
    root = full_bundle(tmp_path / "b", override, index=index, definitions=definitions)
    source = root if form == "directory" else pack(root, tmp_path / "b.tar")
    (tmp_path / "wd").mkdir()
    with pytest.raises(BundleError) as info, open_bundle(source, workdir=tmp_path / "wd"):
        pass
    assert words in str(info.value), str(info.value)
    assert info.value.hint and "export it again" in info.value.hint
    assert list((tmp_path / "wd").iterdir()) == []  # the unpacked copy is gone too
    assert host.read_bytes() == HOST


@pytest.mark.parametrize("name", [f"{FILE_ID}.png", f"{FILE_ID}__7e91c5e2d2.webp", FILE_ID, "legacy/odd name.txt",
                                  f"{FILE_ID}.tar.gz", "caf\u00e9.png"])
def test_cairncms_object_names_accepted(name: str) -> None:
    """What CairnCMS writes (``<id><ext>``, transforms ``<id>__<hash>.<ext>``) and older sub-folder layouts."""
    assert bundle.check_object_name(name) == name
    assert bundle.file_member("local", name) == f"files/local/{name}"


def test_good_full_bundle_opens(tmp_path: Path) -> None:
    root = full_bundle(tmp_path / "b")
    with open_bundle(pack(root, tmp_path / "b.tar.gz")) as path:
        manifest = json.loads((path / "manifest.json").read_bytes())
        assert list(bundle.iter_file_index(path, manifest)) == _entry(f"{FILE_ID}.png")
        assert bundle.member_path(path, manifest, "tables/things.jsonl", field="t").read_bytes() == b'[1, "one"]\n'
