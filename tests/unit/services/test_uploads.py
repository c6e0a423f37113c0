"""UploadDir: names confined to the root, whole files only, never an overwrite."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from netbootd.services.files import AccessDenied, FileLookupError
from netbootd.services.uploads import FileExists, UploadDir, UploadFile


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "taken").write_bytes(b"old")
    (root / "sub" / "taken").write_bytes(b"old")
    (root / "plainfile").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "escape-rel").symlink_to("../outside")
    (root / "alias").symlink_to("sub")
    (root / "dangling").symlink_to("nowhere")
    return root


@pytest.fixture
def uploads(root: Path) -> UploadDir:
    return UploadDir(root)


def entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_round_trip(uploads: UploadDir, root: Path) -> None:
    before = entries(root)
    f = uploads.create("new.img")
    assert f.path == root / "new.img"
    f.write(0, b"hello ")
    f.write(6, b"world")
    f.commit()
    assert f.committed
    assert (root / "new.img").read_bytes() == b"hello world"
    # The temporary file is gone; only the new name remains.
    assert entries(root) == before | {"new.img"}
    assert stat.S_IMODE((root / "new.img").stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_writes_may_come_out_of_order(uploads: UploadDir, root: Path) -> None:
    f = uploads.create("/sub/out-of-order")
    f.write(4, b"5678")
    f.write(0, b"1234")
    f.commit()
    assert (root / "sub" / "out-of-order").read_bytes() == b"12345678"


def test_large_write(uploads: UploadDir, root: Path) -> None:
    data = os.urandom(1 << 20)
    with uploads.create("big") as f:
        f.write(0, data)
        f.commit()
    assert (root / "big").read_bytes() == data


def test_partial_upload_never_visible(uploads: UploadDir, root: Path) -> None:
    f = uploads.create("sub/partial")
    f.write(0, b"half")
    assert not (root / "sub" / "partial").exists()
    hidden = [n for n in entries(root / "sub") if n not in {"deeper", "taken"}]
    assert len(hidden) == 1
    assert hidden[0].startswith(".")
    assert (root / "sub" / hidden[0]).read_bytes() == b"half"
    f.discard()


def test_discard_leaves_nothing(uploads: UploadDir, root: Path) -> None:
    before = entries(root)
    f = uploads.create("gone")
    f.write(0, b"x" * 100)
    f.discard()
    assert entries(root) == before
    f.discard()  # idempotent
    assert entries(root) == before
    with pytest.raises(ValueError):
        f.write(0, b"late")
    with pytest.raises(ValueError):
        f.commit()


def test_context_manager_discards_unless_committed(uploads: UploadDir, root: Path) -> None:
    before = entries(root)
    with pytest.raises(RuntimeError), uploads.create("interrupted") as f:
        f.write(0, b"x")
        raise RuntimeError("transfer failed")
    assert entries(root) == before


def test_commit_is_idempotent_and_discard_after_commit_keeps_file(
    uploads: UploadDir, root: Path
) -> None:
    f = uploads.create("kept")
    f.write(0, b"data")
    f.commit()
    f.commit()
    f.discard()
    assert (root / "kept").read_bytes() == b"data"


def test_empty_file(uploads: UploadDir, root: Path) -> None:
    f = uploads.create("empty")
    f.commit()
    assert (root / "empty").read_bytes() == b""


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "a\0b",
        "sub\\evil",
        "//etc/passwd",
        "../outside/x",
        "sub/../../outside/x",
        "sub/..",
        "sub/.",
        "sub/",
        ".",
    ],
)
def test_refused_names(uploads: UploadDir, root: Path, name: str) -> None:
    before = entries(root)
    with pytest.raises(AccessDenied):
        uploads.create(name)
    assert entries(root) == before


@pytest.mark.parametrize("name", ["missing/x", "sub/missing/x", "plainfile/x", "dangling/x"])
def test_parent_must_be_an_existing_directory(uploads: UploadDir, name: str) -> None:
    with pytest.raises(AccessDenied):
        uploads.create(name)


@pytest.mark.parametrize("name", ["escape/x", "escape-rel/x"])
def test_symlinked_parent_outside_root_refused(
    uploads: UploadDir, root: Path, tmp_path: Path, name: str
) -> None:
    with pytest.raises(AccessDenied):
        uploads.create(name)
    assert entries(tmp_path / "outside") == set()


def test_symlinked_parent_inside_root_allowed(uploads: UploadDir, root: Path) -> None:
    f = uploads.create("alias/via-link")
    # The file lands in the directory the link really points at.
    assert f.path == root / "sub" / "via-link"
    f.write(0, b"ok")
    f.commit()
    assert (root / "sub" / "via-link").read_bytes() == b"ok"
    assert (root / "alias" / "via-link").read_bytes() == b"ok"


def test_root_itself_reached_through_a_symlink(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root)
    f = UploadDir(link).create("through")
    f.commit()
    assert (root / "through").exists()


@pytest.mark.parametrize("name", ["taken", "/taken", "sub/taken", "alias/taken", "dangling"])
def test_existing_target_refused_at_create(uploads: UploadDir, root: Path, name: str) -> None:
    before = entries(root)
    with pytest.raises(FileExists) as info:
        uploads.create(name)
    assert isinstance(info.value, FileLookupError)
    assert entries(root) == before
    assert (root / "taken").read_bytes() == b"old"


def test_directory_as_target_refused(uploads: UploadDir) -> None:
    with pytest.raises(FileExists):
        uploads.create("sub")


def test_existing_target_refused_at_commit(uploads: UploadDir, root: Path) -> None:
    before = entries(root)
    f = uploads.create("raced")
    f.write(0, b"new")
    # Someone else got there first while the transfer was running.
    (root / "raced").write_bytes(b"first")
    with pytest.raises(FileExists):
        f.commit()
    assert (root / "raced").read_bytes() == b"first"
    # The temporary file went with the failed commit.
    assert entries(root) == before | {"raced"}
    assert not f.committed
    f.discard()


def test_two_uploads_of_one_name_only_one_wins(uploads: UploadDir, root: Path) -> None:
    first = uploads.create("twice")
    second = uploads.create("twice")
    first.write(0, b"one")
    second.write(0, b"two")
    first.commit()
    with pytest.raises(FileExists):
        second.commit()
    assert (root / "twice").read_bytes() == b"one"


def test_descriptors_are_released(uploads: UploadDir) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for i in range(5):
        f: UploadFile = uploads.create(f"fd-{i}")
        if i % 2:
            f.commit()
        else:
            f.discard()
    with pytest.raises(FileExists):
        uploads.create("taken")
    with pytest.raises(AccessDenied):
        uploads.create("missing/x")
    raced = uploads.create("fd-raced")
    Path(uploads.root, "fd-raced").write_bytes(b"")
    with pytest.raises(FileExists):
        raced.commit()
    assert open_fds() == before
