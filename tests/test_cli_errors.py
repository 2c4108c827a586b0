"""The CLI's one error wrapper and the export's warnings (issue 9, item 6)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_instance

from cairn_migrate import api
from cairn_migrate.cli import cli


def test_uncaught_error_is_exit_3_with_one_line(sqlite_instance: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every input we know of is now translated, so a stand-in bug raises (mocked: a bug cannot be run on demand)."""
    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ghosts\nsecond line")

    monkeypatch.setattr(api, "inspect", bug)
    result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "inspect"])
    assert result.exit_code == 3  # never 1, which means "differences found"
    assert result.output.splitlines() == ["Error: unexpected RuntimeError: ghosts", "  fix: run again as: cairn-migrate "
                                          "--traceback inspect … and report the traceback"]
    traced = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "--traceback", "inspect"])
    assert isinstance(traced.exception, RuntimeError)


def test_export_without_key_or_with_unconfigured_location_warns_and_exits_1(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = make_instance("sqlite", tmp_path / "src", request)
    lines = [line for line in env.read_text().splitlines() if not line.startswith(("KEY=", "STORAGE_LOCATIONS="))]
    env.write_text("\n".join(lines + ["STORAGE_LOCATIONS=elsewhere", "STORAGE_ELSEWHERE_DRIVER=local",
                                      "STORAGE_ELSEWHERE_ROOT=./uploads"]) + "\n")
    result = CliRunner().invoke(cli, ["--env", str(env), "export", "--full", "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 1, result.output
    warnings = [line.strip() for line in result.output.splitlines() if line.strip().startswith("warning:")]
    assert warnings == [
        "warning: the source .env sets no KEY (CairnCMS does not start without it): set KEY in the source's and the "
        "target's .env",
        "warning: 3 file row(s) name storage location(s) local, which STORAGE_LOCATIONS does not configure: their "
        "bytes are not in the bundle (configure the location(s) and export again)",
    ]
    assert (tmp_path / "bundle" / "manifest.json").is_file()  # the rows are all there: the bundle is written


def test_serve_on_a_port_in_use_is_exit_2_naming_port_before_announcing(sqlite_instance: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "serve", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use",
        "  fix: pick a free port with --port PORT (or another address with --host), or stop what listens there",
    ]  # and no "serving … on" line: nothing was served


def test_export_to_an_enc_name_with_a_passphrase_file_encrypts_without_encrypt(
        sqlite_instance: Path, tmp_path: Path) -> None:
    """The .enc name asks for encryption as --encrypt does; a secret for an unencrypted output is bad input."""
    from cairn_migrate.bundle.bundle import MAGIC, open_bundle

    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery\n")
    output = tmp_path / "x.tar.gz.enc"
    result = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "export", "--full", "-o", str(output),
                                      "--passphrase-file", str(secret)])
    assert result.exit_code == 0, result.output
    assert output.read_bytes().startswith(MAGIC)
    with open_bundle(output, passphrase="correct horse battery", workdir=tmp_path) as bundle:
        assert (bundle / "manifest.json").is_file()

    plain = CliRunner().invoke(cli, ["--env", str(sqlite_instance), "export", "--full", "-o", str(tmp_path / "x.tar.gz"),
                                     "--passphrase-file", str(secret)])
    assert plain.exit_code == 2, plain.output
    assert plain.output.splitlines() == [
        f"Error: --passphrase-file was given but {tmp_path / 'x.tar.gz'} is not encrypted",
        "  fix: add --encrypt (and name the archive like clone.tar.gz.enc), or drop the secret",
    ]
    assert not (tmp_path / "x.tar.gz").exists()


def test_damaged_bundles_say_how_to_get_a_whole_one(sqlite_instance: Path, tmp_path: Path) -> None:
    """A truncated archive, a file that is no archive, and a member whose bytes changed: exit 2 with the fix."""
    runner = CliRunner()
    archive, folder = tmp_path / "b.tar.gz", tmp_path / "b"
    for output in (archive, folder):
        result = runner.invoke(cli, ["--env", str(sqlite_instance), "export", "--full", "-o", str(output)])
        assert result.exit_code == 0, result.output
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    garbage = tmp_path / "junk.tar.gz"
    garbage.write_bytes(b"not a bundle at all\n" * 100)
    member = next(path for path in sorted((folder / "tables").glob("*.jsonl")) if path.stat().st_size)
    data = bytearray(member.read_bytes())
    data[0] ^= 1  # same size, other bytes
    member.write_bytes(bytes(data))
    for bundle, words in ((truncated, "truncated"), (garbage, "not a bundle archive"), (folder, "checksum mismatch")):
        result = runner.invoke(cli, ["--env", str(sqlite_instance), "verify", str(bundle)])
        assert result.exit_code == 2, result.output
        error, fix = result.output.splitlines()
        assert error.startswith("Error: ") and words in error
        assert fix == "  fix: the bundle is damaged: copy it again, or export it again from the source"


def test_interrupts_held_over_a_commit_act_after_it() -> None:
    """A Ctrl-C (or SIGTERM) between a commit and the flag saying it happened would roll back the record of
    what was committed (content move's D3/D4): held there, the signal is acted on once the block is done."""
    import signal
    import threading

    from cairn_migrate.errors import interrupts_held

    # Python's own Ctrl-C handler, whatever an earlier test in this process left; the signal goes to the main
    # thread itself (os.kill may be taken by another thread, and acted on after the block had already ended).
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                done.append("committed")
                done.append("flag set")
        assert done == ["committed", "flag set"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, original)


def test_content_move_names_the_option_whose_path_is_wrong(sqlite_instance: Path, tmp_path: Path) -> None:
    """The trial's ``--to missing/.env`` said "fix: pass --env with the path of the instance's .env file" (an option
    the move has no use for), and a folder given for ``--from``/``--to`` said "point --env at the .env file itself".
    Each now names ``--from`` or ``--to``, and the .env inside the folder when there is one."""
    folder = sqlite_instance.parent

    def run(source: str, target: str) -> tuple[int, str]:
        result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}).invoke(
            cli, ["content", "move", "--from", source, "--to", target, "--collection", "articles"])
        return result.exit_code, result.output

    code, output = run(str(sqlite_instance), str(tmp_path / "missing" / ".env"))
    assert code == 2 and f"--to {tmp_path / 'missing' / '.env'} does not exist" in output, output
    assert "--env" not in output
    code, output = run(str(sqlite_instance), str(folder))
    assert code == 2 and f"--to {folder} is a folder" in output and f"--to {folder / '.env'}" in output, output
    code, output = run(str(folder), str(sqlite_instance))
    assert code == 2 and f"--from {folder} is a folder" in output and "manifest.json" in output, output
    assert "--env" not in output


def test_ctrl_c_with_traceback_prints_it_and_still_exits_3(sqlite_instance: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial's Ctrl-C of a move run with ``--traceback`` printed click's "Aborted!" and exited 1 (which means
    "differences found"), with no traceback: now the traceback, then the usual one line and exit 3."""
    (tmp_path / "trial_ctrl_c.py").write_text("def stop(collection, row, context):\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    target = tmp_path / "dst"
    shutil.copytree(sqlite_instance.parent, target)
    result = CliRunner(env={"CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}).invoke(
        cli, ["--traceback", "content", "move", "--from", str(sqlite_instance), "--to", str(target / ".env"),
              "--collection", "articles", "--transform", "trial_ctrl_c:stop"])
    assert result.exit_code == 3, result.output
    assert "Traceback (most recent call last)" in result.output and "Error: interrupted" in result.output
    assert "Aborted!" not in result.output
