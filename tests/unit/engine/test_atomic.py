"""Atomic files and folders (mlbseg.engine.atomic): complete or absent, with the umask's permissions."""

from __future__ import annotations

import os
import stat

import pytest

from mlbseg.engine.atomic import (
    atomic_file,
    atomic_folder,
    check_target,
    write_atomic,
    write_text_atomic,
)
from mlbseg.errors import UserError


@pytest.fixture
def umask():
    """Set the process umask for the test (default 0o022) and restore the previous one after."""
    previous = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def siblings(folder) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


# ------------------------------------------------------------------------------------------------- files


def test_a_written_file_gets_the_umask_mode_not_mkstemps_private_one(tmp_path, umask):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "hello")
    assert target.read_text() == "hello"
    assert mode(target) == 0o644


def test_file_mode_follows_another_umask(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "private.bin"
    with atomic_file(target) as file:
        file.write(b"x")
    assert mode(target) == 0o600


def test_replacing_a_file_keeps_no_temporary_sibling_and_creates_parents(tmp_path, umask):
    target = tmp_path / "deep" / "er" / "state.bin"
    write_atomic(target, lambda file: file.write(b"one"))
    write_atomic(target, lambda file: file.write(b"two"))
    assert target.read_bytes() == b"two"
    assert siblings(target.parent) == ["state.bin"]


def fail_inside(context, fill, error: BaseException) -> None:
    """Enter ``context``, ``fill`` what it yields, then raise ``error`` inside the block."""
    with context as handle:
        fill(handle)
        raise error


def test_an_error_inside_atomic_file_keeps_the_old_content_and_no_tmp_sibling(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    staged: list[str] = []

    def fill(file):
        file.write(b"half of the new")
        staged.extend(name for name in siblings(tmp_path) if name != "metrics.csv")

    with pytest.raises(RuntimeError, match="disk on fire"):
        fail_inside(atomic_file(target), fill, RuntimeError("disk on fire"))
    assert len(staged) == 1  # the hidden sibling existed while writing
    assert staged[0].startswith(".metrics.csv.")
    assert staged[0].endswith(".tmp")
    assert target.read_text() == "old"
    assert siblings(tmp_path) == ["metrics.csv"]


def test_an_interrupting_base_exception_also_removes_the_staged_file(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        fail_inside(atomic_file(target), lambda file: file.write(b"x"), KeyboardInterrupt())
    assert siblings(tmp_path) == []


def test_text_is_written_as_utf8(tmp_path):
    target = tmp_path / "t.txt"
    write_text_atomic(target, "α·β ≤ ε\n")
    assert target.read_bytes() == "α·β ≤ ε\n".encode()


# ----------------------------------------------------------------------------------------------- folders


def test_a_folder_is_renamed_into_place_with_the_umask_mode(tmp_path, umask):
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        assert staging.parent == tmp_path
        assert staging.name.startswith(".out.")
        assert not target.exists()
        (staging / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"
    assert mode(target) == 0o755  # not mkdtemp's 0700
    assert siblings(tmp_path) == ["out"]


def test_an_error_removes_the_staging_folder_and_the_parents_it_created(tmp_path):
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "new" / "deeper" / "out"
    with pytest.raises(ValueError, match="bad case"):
        fail_inside(
            atomic_folder(target),
            lambda staging: (staging / "part.txt").write_text("half"),
            ValueError("bad case"),
        )
    assert (tmp_path / "kept").is_dir()
    assert siblings(tmp_path / "kept") == []


def test_an_error_keeps_an_existing_target_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="failed late"):
        fail_inside(
            atomic_folder(target, overwrite=True),
            lambda staging: (staging / "new.txt").write_text("new"),
            ValueError("failed late"),
        )
    assert siblings(target) == ["old.txt"]
    assert siblings(tmp_path) == ["out"]


def test_overwrite_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # the old folder stays until the new one is complete
    assert siblings(target) == ["new.txt"]
    assert siblings(tmp_path) == ["out"]  # no `.out.*.old` or staging folder left


def test_an_existing_target_without_overwrite_is_refused_before_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UserError, match="already exists; pass --overwrite"), atomic_folder(target):
        pytest.fail("the block must not run")
    assert siblings(tmp_path) == ["out"]


# ------------------------------------------------------------------------------------------ check_target


def test_check_target_accepts_an_absent_target(tmp_path):
    check_target(tmp_path / "absent", overwrite=False)
    check_target(tmp_path / "absent", overwrite=True)


def test_check_target_refuses_an_existing_target_without_overwrite(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    for name in ("folder", "file"):
        with pytest.raises(UserError, match="already exists; pass --overwrite"):
            check_target(tmp_path / name, overwrite=False)
    check_target(tmp_path / "folder", overwrite=True)


def test_check_target_refuses_a_file_or_a_link_where_a_folder_is_expected(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("file", "link", "dangling"):
        with pytest.raises(UserError, match="exists and is not a folder"):
            check_target(tmp_path / name, overwrite=True)
    with pytest.raises(UserError, match="exists and is not a folder"), atomic_folder(tmp_path / "file", True):
        pytest.fail("the block must not run")
    assert (tmp_path / "file").read_text() == "x"
