"""FileTree: names confined to the root, only regular files, extra names from elsewhere; and the
in-memory file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileTree,
    MemoryFile,
)


@pytest.fixture
def tree(tmp_path: Path) -> FileTree:
    root = tmp_path / "root"
    (root / "pxelinux.cfg").mkdir(parents=True)
    (root / "menus").mkdir()
    (root / "pxelinux.0").write_bytes(b"PXE" * 100)
    (root / "menus" / "x").write_text("MENU\n")
    (root / "pxelinux.cfg" / "default").symlink_to("../menus/x")
    (tmp_path / "secret").write_text("no\n")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "dangling-out").symlink_to("../nowhere")
    (root / "dangling-in").symlink_to("missing")
    os.mkfifo(root / "fifo")
    outside = tmp_path / "ipxe"
    outside.mkdir()
    (outside / "undionly.kpxe").write_bytes(b"UNDI")
    (outside / "ipxe.efi").write_bytes(b"EFI")
    (root / "ipxe.efi").write_bytes(b"LOCAL")  # the root's own copy wins
    return FileTree(
        root,
        extra={
            "undionly.kpxe": outside / "undionly.kpxe",
            "ipxe.efi": outside / "ipxe.efi",
            "snponly.efi": outside / "missing.efi",
        },
    )


def read_all(tree: FileTree, name: str) -> bytes:
    opened = tree.open(name)
    try:
        return opened.read(0, opened.size)
    finally:
        opened.close()


def test_plain_file(tree: FileTree) -> None:
    assert read_all(tree, "pxelinux.0") == b"PXE" * 100
    assert tree.resolve("pxelinux.0") == tree.root / "pxelinux.0"


def test_leading_slash_stripped(tree: FileTree) -> None:
    assert read_all(tree, "/pxelinux.0") == b"PXE" * 100


def test_symlink_inside_root_allowed(tree: FileTree) -> None:
    assert read_all(tree, "pxelinux.cfg/default") == b"MENU\n"
    assert tree.resolve("/pxelinux.cfg/default") == tree.root / "menus" / "x"


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "menus/../../secret",
        "/../secret",
        "..",
        "//etc/passwd",
        "menus\\x",
        "..\\secret",
        "pxelinux.0\0.txt",
        "",
        "/",
        "escape",
        "escape-dir/secret",
        "dangling-out",
    ],
)
def test_refused(tree: FileTree, name: str) -> None:
    with pytest.raises(AccessDenied):
        tree.resolve(name)
    with pytest.raises(AccessDenied):
        tree.open(name)


def test_symlink_escape_reason(tree: FileTree) -> None:
    with pytest.raises(AccessDenied) as info:
        tree.open("escape")
    assert info.value.reason == "outside root"


@pytest.mark.parametrize("name", ["menus", "/menus", "pxelinux.cfg", "fifo"])
def test_not_regular_refused(tree: FileTree, name: str) -> None:
    with pytest.raises(AccessDenied) as info:
        tree.open(name)
    assert info.value.reason == "not a regular file"


@pytest.mark.parametrize("name", ["nope", "menus/nope", "pxelinux.0/x", "dangling-in"])
def test_not_found(tree: FileTree, name: str) -> None:
    with pytest.raises(FileNotFound):
        tree.open(name)


def test_extra_names(tree: FileTree) -> None:
    assert read_all(tree, "undionly.kpxe") == b"UNDI"
    assert read_all(tree, "/undionly.kpxe") == b"UNDI"
    assert read_all(tree, "ipxe.efi") == b"LOCAL"
    with pytest.raises(FileNotFound):
        tree.open("snponly.efi")  # mapped, but the file is not installed
    with pytest.raises(FileNotFound):
        tree.open("menus/undionly.kpxe")  # exact names only


def test_errors_share_a_base(tree: FileTree) -> None:
    with pytest.raises(FileLookupError):
        tree.open("nope")
    with pytest.raises(FileLookupError):
        tree.open("../x")


def test_read_ranges_and_close(tree: FileTree) -> None:
    opened = tree.open("pxelinux.0")
    assert opened.size == 300
    assert opened.read(297, 10) == b"PXE"
    assert opened.read(300, 10) == b""
    assert opened.read(3, 3) == b"PXE"
    opened.close()
    opened.close()
    with pytest.raises(ValueError):
        opened.read(0, 1)


def test_root_itself_is_real_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "real" / "f").write_text("f")
    tree = FileTree(tmp_path / "link")
    assert tree.root == tmp_path.resolve() / "real"
    assert read_all(tree, "f") == b"f"


def test_memory_file_is_the_one_in_memory_file() -> None:
    from netbootd.services import machines

    assert machines.MemoryFile is MemoryFile
    opened = MemoryFile(b"rendered")
    assert (opened.size, opened.read(2, 3)) == (8, b"nde")
