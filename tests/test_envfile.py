"""CairnCMS's env rules: value typing, precedence, ``_FILE`` secrets, nested options."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn_migrate.instance.envfile import config_from_env, load_env, type_value
from cairn_migrate.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("X", "true", True),
        ("X", "false", False),
        ("X", "null", None),
        ("X", "42", 42),
        ("X", "4.5", 4.5),
        ("X", "007", "007"),  # leading zero: kept as text
        ("X", "0", "0"),
        ("X", "a,b", ["a", "b"]),
        ("X", '{"a": 1}', {"a": 1}),
        ("X", "string:a,b", "a,b"),
        ("X", "string:123", "123"),
        ("X", "number:12", 12),
        ("X", "array:1,x", [1, "x"]),
        ("X", 'json:{"k": [1]}', {"k": [1]}),
        ("DB_PASSWORD", "12345", "12345"),  # forced string
        ("DB_PASSWORD", "a,b", "a,b"),
        ("DB_PORT", "5432", 5432),  # forced number
        ("PORT", "8055", "8055"),  # forced string
        ("DB_EXCLUDE_TABLES", "one", ["one"]),  # forced array
        ("STORAGE_S3_SECRET", "abc,def", ["abc", "def"]),  # the documented trap
    ],
)
def test_values_are_typed_like_cairncms(name: str, raw: str, expected: object) -> None:
    assert type_value(name, raw) == expected


def test_env_file_wins_over_process_environment(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DB_CLIENT=sqlite3\nKEY=from-file\n")
    env = load_env(env_file, {"KEY": "from-process", "SECRET": "only-in-process"})
    assert env["KEY"] == "from-file"
    assert env["SECRET"] == "only-in-process"


def test_defaults_apply_when_unset(tmp_path: Path) -> None:
    env = load_env(None, {})
    assert env["STORAGE_LOCATIONS"] == "local"
    assert env["STORAGE_LOCAL_DRIVER"] == "local"
    assert env["DB_EXCLUDE_TABLES"] == ["spatial_ref_sys", "sysdiagrams"]


def test_file_suffix_reads_secret_relative_to_env(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cr3t\n")
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET_FILE=secret.txt\n")
    assert load_env(env_file, {})["SECRET"] == "s3cr3t"


def test_file_suffix_and_value_together_is_an_error(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET=x\nSECRET_FILE=secret.txt\n")
    with pytest.raises(ConfigError, match="Both SECRET and SECRET_FILE"):
        load_env(env_file, {})


def test_missing_env_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_env(tmp_path / "nope.env", {})
    assert "does not exist" in info.value.message
    assert "--env" in (info.value.hint or "")


def test_config_from_env_camel_cases_and_nests() -> None:
    env = {
        "STORAGE_S3_DRIVER": "s3",
        "STORAGE_S3_FORCE_PATH_STYLE": True,
        "STORAGE_S3_SERVER_SIDE_ENCRYPTION": "AES256",
        "DB_SSL__REJECT_UNAUTHORIZED": False,
        "OTHER": 1,
    }
    assert config_from_env(env, "STORAGE_S3_") == {
        "driver": "s3",
        "forcePathStyle": True,
        "serverSideEncryption": "AES256",
    }
    assert config_from_env(env, "DB_") == {"ssl": {"rejectUnauthorized": False}}
