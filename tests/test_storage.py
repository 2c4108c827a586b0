"""The storage layer against real servers: local folders, SeaweedFS (S3), fake-gcs-server, Azurite.

No mocks: every backend test writes and reads real objects on the emulators
``scripts/servers start`` runs, and verifies the raw object names CairnCMS
would use by listing the bucket with the filesystem itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from storage_servers import (  # noqa: F401 - fixtures are used by name
    any_location,
    azure_config,
    gcs_config,
    make_location,
    s3_config,
    storage_driver,
)

from cairn_migrate.errors import ConfigError, InstanceUnreachable, NotFound, UnsupportedDriver
from cairn_migrate.instance.instance import LocationConfig
from cairn_migrate.instance.storage import Location, local_path, normalize_root, object_key, open_location, upload_tree

UPLOADS = Path(__file__).parent / "fixtures" / "sqlite" / "uploads"
FILES = {p.name: p.read_bytes() for p in sorted(UPLOADS.iterdir()) if p.is_file()}
CLOUD = [pytest.param(d, id=d, marks=getattr(pytest.mark, d)) for d in ("s3", "gcs", "azure")]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- naming (no server)
@pytest.mark.parametrize(
    ("root", "name", "key"),
    [
        (None, "a.png", "a.png"),
        ("", "a.png", "a.png"),
        ("/uploads/", "a.png", "uploads/a.png"),
        ("uploads", "a.png", "uploads/a.png"),
        ("//media//uploads//", "a.png", "media/uploads/a.png"),
        ("/", "a.png", "a.png"),
        ("uploads", "sub/a.png", "uploads/sub/a.png"),
        ("uploads", "/a.png", "uploads/a.png"),
        ("uploads", "./x/../a.png", "uploads/a.png"),
    ],
)
def test_object_key_matches_cairncms_normalize_path(root: str | None, name: str, key: str) -> None:
    assert object_key(normalize_root(root), name) == key


def test_object_key_rejects_names_that_leave_the_bucket() -> None:
    with pytest.raises(ConfigError):
        object_key("", "../a.png")
    with pytest.raises(ConfigError):
        object_key("uploads", "")


@pytest.mark.parametrize(
    ("name", "rel"),
    [("a.png", "a.png"), ("../../etc/passwd", "etc/passwd"), ("/abs.png", "abs.png"), ("sub/../b.png", "b.png"),
     ("//x//y.png", "x/y.png")],
)
def test_local_path_stays_under_root(tmp_path: Path, name: str, rel: str) -> None:
    assert local_path(str(tmp_path), name) == str(tmp_path / rel)


def test_cloudinary_is_not_supported_yet() -> None:
    config = LocationConfig("cdn", "cloudinary", {"cloudName": "x", "apiKey": "k", "apiSecret": "s"})
    with pytest.raises(UnsupportedDriver, match="not support") as info:
        open_location(config)
    assert info.value.hint


def test_missing_required_option_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="STORAGE_MEDIA_BUCKET is not set"):
        open_location(LocationConfig("media", "s3", {"key": "k", "secret": "s"}))
    with pytest.raises(ConfigError, match="STORAGE_S3_KEY and _SECRET"):
        open_location(LocationConfig("s3", "s3", {"bucket": "b", "key": "k"}))


@pytest.mark.parametrize(
    "config",
    [
        s3_config(endpoint="http://127.0.0.1:1"),
        gcs_config(apiEndpoint="http://127.0.0.1:1"),
        azure_config(endpoint="http://127.0.0.1:1/devstoreaccount1"),
    ],
    ids=["s3", "gcs", "azure"],
)
def test_server_down_is_unreachable(config: LocationConfig) -> None:
    location = open_location(config)
    with pytest.raises(InstanceUnreachable, match="not reachable") as info:
        location.check()
    assert "\n" not in info.value.message
    assert "cairn-test-secret" not in str(info.value) and "Eby8vd" not in str(info.value)
    # object operations fail fast too, and never read "server down" as "object missing"
    with pytest.raises(InstanceUnreachable):
        location.exists("a.png")
    with pytest.raises(InstanceUnreachable):
        list(location.list())


def test_s3_endpoint_without_scheme_is_https() -> None:
    location = open_location(s3_config(endpoint="s3.example.com", bucket="media", root="/files/"))
    assert location.endpoint == "https://s3.example.com"
    assert location.describe() == {"name": "s3", "driver": "s3", "root": "files", "bucket": "media",
                                   "endpoint": "https://s3.example.com"}
    assert location.path_for("a.png") == "media/files/a.png"


def test_describe_has_no_secrets() -> None:
    for config in (s3_config(), azure_config()):
        text = json.dumps(open_location(config).describe())
        assert "cairn-test-secret" not in text and "Eby8vd" not in text
        assert config.name in text


# --------------------------------------------------------------------------- every backend
def test_write_read_size_sha256(any_location: Location) -> None:
    any_location.check()
    assert upload_tree(UPLOADS, any_location) == len(FILES)
    for name, data in FILES.items():
        assert any_location.exists(name)
        assert any_location.size(name) == len(data)
        assert any_location.sha256(name) == _sha(data)
        assert any_location.sha256(name, chunk=7) == _sha(data)
        with any_location.open_read(name) as fh:
            assert fh.read() == data


def test_missing_object(any_location: Location) -> None:
    assert not any_location.exists("nope.png")
    assert any_location.size("nope.png") is None
    with pytest.raises(NotFound, match="nope.png"):
        any_location.sha256("nope.png")


def test_list_with_prefix(any_location: Location) -> None:
    upload_tree(UPLOADS, any_location)
    any_location.write_bytes("sub/nested.txt", b"nested")
    listed = dict(any_location.list())
    assert listed == {**{n: len(d) for n, d in FILES.items()}, "sub/nested.txt": 6}
    image = next(n for n in FILES if n.endswith(".png")).split(".")[0]
    assert sorted(n for n, _ in any_location.list(image)) == sorted(n for n in FILES if n.startswith(image))
    assert sorted(n for n, _ in any_location.list("sub/")) == ["sub/nested.txt"]
    assert list(any_location.list("zzz")) == []


def test_delete(any_location: Location) -> None:
    any_location.write_bytes("gone.txt", b"bye")
    assert any_location.exists("gone.txt")
    any_location.delete("gone.txt")
    assert not any_location.exists("gone.txt")
    assert any_location.size("gone.txt") is None
    any_location.delete("gone.txt")  # idempotent
    assert list(any_location.list("gone")) == []


def test_overwrite_replaces_bytes(any_location: Location) -> None:
    any_location.write_bytes("x.txt", b"first version")
    any_location.write_bytes("x.txt", b"2nd")
    assert any_location.read_bytes("x.txt") == b"2nd"
    assert any_location.size("x.txt") == 3


# --------------------------------------------------------------------------- naming on real buckets
@pytest.mark.parametrize("driver", CLOUD)
@pytest.mark.parametrize(("root", "prefix"), [("/uploads/", "uploads/"), ("//a//b/", "a/b/"), (None, "")])
def test_root_normalisation_in_raw_bucket(make_location, driver: str, root: str | None, prefix: str) -> None:
    location = make_location(driver, **({"root": root} if root is not None else {}))
    name = next(iter(FILES))
    location.write_bytes(name, FILES[name])
    raw = sorted(location.fs.find(location.container))
    assert raw == [f"{location.container}/{prefix}{name}"]
    assert location.path_for(name) == raw[0]
    assert dict(location.list()) == {name: len(FILES[name])}
    location.check()


def test_local_dotdot_cannot_escape(make_location, tmp_path: Path) -> None:
    location = make_location("local", root=str(tmp_path / "inner" / "root"))
    location.write_bytes("../../escape.txt", b"x")
    assert (tmp_path / "inner" / "root" / "escape.txt").read_bytes() == b"x"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "inner" / "escape.txt").exists()
    assert location.read_bytes("/escape.txt") == b"x"


def test_local_missing_root_is_config_error(tmp_path: Path) -> None:
    location = open_location(LocationConfig("local", "local", {"root": str(tmp_path / "absent")}))
    with pytest.raises(ConfigError, match=r"STORAGE_LOCAL_ROOT=.*absent: folder does not exist"):
        location.check()


@pytest.mark.parametrize(
    ("driver", "setting"),
    [
        pytest.param("s3", "STORAGE_S3_BUCKET", marks=pytest.mark.s3),
        pytest.param("gcs", "STORAGE_GCS_BUCKET", marks=pytest.mark.gcs),
        pytest.param("azure", "STORAGE_AZURE_CONTAINER_NAME", marks=pytest.mark.azure),
    ],
)
def test_missing_bucket_names_the_setting(make_location, driver: str, setting: str) -> None:
    location = make_location(driver, create=False)
    with pytest.raises(ConfigError, match=f"^{setting}={location.container}: (bucket|container) does not exist"):
        location.check()
    with pytest.raises(ConfigError, match=setting):
        list(location.list())


@pytest.mark.s3
def test_s3_bad_credentials(make_location) -> None:
    location = make_location("s3")
    bad = open_location(s3_config(bucket=location.container, secret="wrong-secret"))
    with pytest.raises(ConfigError, match="STORAGE_S3_KEY / STORAGE_S3_SECRET") as info:
        bad.check()
    assert "wrong-secret" not in str(info.value)


@pytest.mark.azure
def test_azure_bad_key(make_location) -> None:
    location = make_location("azure")
    bad = open_location(azure_config(container=location.container, accountKey="d3Jvbmc="))
    with pytest.raises(ConfigError, match="STORAGE_AZURE_ACCOUNT_KEY"):
        bad.check()


# --------------------------------------------------------------------------- copies
def _check_copied(source: Location, target: Location, target_prefix: str = "") -> None:
    for name, data in FILES.items():
        source.copy_to(name, target, target_prefix + name)
        assert target.sha256(target_prefix + name) == _sha(data)
        assert target.size(target_prefix + name) == len(data)


@pytest.mark.s3
def test_copy_local_to_s3(make_location) -> None:
    source, target = make_location("local"), make_location("s3", root="/uploads/")
    upload_tree(UPLOADS, source)
    _check_copied(source, target)
    assert sorted(target.fs.find(target.container)) == sorted(f"{target.container}/uploads/{n}" for n in FILES)


@pytest.mark.s3
def test_copy_s3_to_s3_is_server_side(make_location, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = make_location("s3", name="a"), make_location("s3", name="b", root="mirror")
    assert source.identity == target.identity
    upload_tree(UPLOADS, source)

    def no_streaming(name: str):  # a server-side copy never reads the bytes through us
        raise AssertionError("streamed copy used for a same-endpoint S3 copy")

    monkeypatch.setattr(source, "open_read", no_streaming)
    for name, data in FILES.items():
        source.copy_to(name, target, "copied/" + name)
    monkeypatch.undo()
    for name, data in FILES.items():
        assert target.sha256("copied/" + name) == _sha(data)
    assert all(k.startswith(f"{target.container}/mirror/copied/") for k in target.fs.find(target.container))


@pytest.mark.s3
@pytest.mark.azure
def test_copy_s3_to_azure(make_location) -> None:
    source, target = make_location("s3"), make_location("azure", root="/files")
    upload_tree(UPLOADS, source)
    _check_copied(source, target)
    assert dict(target.list()) == {n: len(d) for n, d in FILES.items()}


@pytest.mark.gcs
def test_copy_gcs_to_local_and_back(make_location) -> None:
    gcs, local = make_location("gcs"), make_location("local")
    upload_tree(UPLOADS, gcs)
    _check_copied(gcs, local)
    _check_copied(local, gcs, "again/")


# --------------------------------------------------------------------------- async primitives (storage move)
@pytest.mark.s3
def test_s3_checksummed_put_and_multipart(make_location) -> None:
    import asyncio
    import os

    from fsspec.asyn import sync

    from cairn_migrate.instance import storage
    from cairn_migrate.errors import MigrateError

    target = make_location("s3", root="/uploads/")
    assert storage.s3_verifies_checksums(target)  # SeaweedFS refuses a wrong x-amz-checksum-sha256
    assert list(target.list()) == []  # and the probe left nothing behind
    data = b"hello checksums"
    assert sync(target.fs.loop, storage.s3_put_verified, target, "a.txt", data, hashlib.sha256(data).digest())
    assert target.read_bytes("a.txt") == data
    with pytest.raises(MigrateError):
        sync(target.fs.loop, storage.s3_put_verified, target, "b.txt", data, hashlib.sha256(b"other").digest())
    assert target.size("b.txt") is None
    big = os.urandom(storage.PART + 12345)

    async def upload() -> tuple[str, bool]:
        async def read(start: int, end: int) -> bytes:
            return big[start:end]

        return await storage.s3_upload_verified(target, "big.bin", len(big), read, asyncio.Semaphore(2))

    digest, verified = sync(target.fs.loop, upload)
    assert verified and digest == _sha(big)
    assert target.sha256("big.bin") == _sha(big) and target.size("big.bin") == len(big)


@pytest.mark.parametrize("driver", ["local", *CLOUD])
def test_async_size_and_read(make_location, driver: str) -> None:
    from fsspec.asyn import get_loop, sync

    from cairn_migrate.instance import storage

    location = make_location(driver)
    location.write_bytes("d/x.bin", b"0123456789")
    loop = storage.async_loop(location) or get_loop()
    assert (storage.async_loop(location) is None) == (driver == "local")
    assert sync(loop, storage.asize, location, "d/x.bin") == 10
    assert sync(loop, storage.asize, location, "d/missing.bin") is None
    assert sync(loop, storage.aread, location, "d/x.bin") == b"0123456789"
    assert sync(loop, storage.aread, location, "d/x.bin", 2, 5) == b"234"


def test_local_writes_publish_whole_objects_or_nothing(tmp_path: Path) -> None:
    """A write cut short (a kill, an error) never leaves a truncated file under the name CairnCMS serves."""
    (tmp_path / "uploads").mkdir()
    location = open_location(LocationConfig("local", "local", {"root": str(tmp_path / "uploads")}))
    location.write_bytes("kept.txt", b"the old bytes")
    with location.open_write("new.bin") as out:
        out.write(b"x" * 1000)
        assert not (tmp_path / "uploads" / "new.bin").exists()  # a kill now leaves no new.bin at all
    assert location.read_bytes("new.bin") == b"x" * 1000
    with pytest.raises(RuntimeError), location.open_write("kept.txt") as out:
        out.write(b"half of the new")
        raise RuntimeError("the copy failed half-way")
    assert location.read_bytes("kept.txt") == b"the old bytes"  # the old object is untouched
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["kept.txt", "new.bin"]  # no temp left


@pytest.mark.s3
def test_s3_lean_client_pages_names_and_sizes_like_s3fs(make_location, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean client's listing (over several pages), sizes and bucket check agree with s3fs, odd names included."""
    from cairn_migrate.instance import s3_lean

    location = make_location("s3", root="/up/")
    assert location.lean is not None
    names = ["a b.txt", "plus+sign.txt", "ünï/cödé.bin", "deep/er/x~y.txt", "pct%20.txt"]
    for n, name in enumerate(names):
        location.lean.put(object_key(location.root, name), b"x" * n, hashlib.sha256(b"x" * n).digest())
    pages = list(location.lean.list("up/", page_size=2))
    assert len(pages) == 3 and sorted(k for page in pages for k, _ in page) == sorted(f"up/{n}" for n in names)
    listed = sorted(location.list())
    assert listed == sorted((n, i) for i, n in enumerate(names))
    assert listed == sorted((k[len(location.container) + 4:], v["size"])
                            for k, v in location.fs.find(location.container, detail=True).items())
    assert [location.size(n) for n in names] == list(range(len(names))) and location.size("nope") is None
    assert location.read_bytes(names[3]) == b"xxx"
    location.check()
    monkeypatch.setenv(s3_lean.LEAN_ENV, "0")
    assert open_location(location.config).lean is None
