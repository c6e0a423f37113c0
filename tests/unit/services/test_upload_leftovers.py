"""Uploads cut short by a crash leave their temporary files; the start removes them, and
nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from netbootd.services.uploads import UploadDir, remove_leftovers


def test_the_temporary_files_of_unfinished_uploads_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    uploads = UploadDir(tmp_path)
    cut_short = [uploads.create("dump.bin"), uploads.create("sub/core")]
    temps = list(tmp_path.rglob(".*.part"))
    assert len(temps) == 2
    for upload in cut_short:
        upload.write(0, b"half")
    # As if the process died here: nothing discards the two uploads.
    finished = uploads.create("done.bin")
    finished.write(0, b"whole")
    finished.commit()
    assert remove_leftovers(tmp_path) == 2
    assert not any(path.exists() for path in temps)
    assert (tmp_path / "done.bin").read_bytes() == b"whole"
    for upload in cut_short:
        upload.discard()  # closes the descriptor; the temporary file is gone already


def test_only_names_uploads_make_and_only_files_go(tmp_path: Path) -> None:
    keep = [
        tmp_path / "boot.0",
        tmp_path / ".notes.part",
        tmp_path / ".x.0123456789ABCDEF.part",
        tmp_path / "x.0123456789abcdef.part",  # not hidden
        tmp_path / ".x.0123456789abcdef.part.bak",
    ]
    for path in keep:
        path.write_text("keep")
    directory = tmp_path / ".d.0123456789abcdef.part"
    directory.mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / ".y.0123456789abcdef.part").write_text("not ours")
    os.symlink(outside, tmp_path / "link")  # a symlinked directory is not followed
    os.symlink(tmp_path / "boot.0", tmp_path / ".z.0123456789abcdef.part")  # nor a symlink gone
    assert remove_leftovers(tmp_path) == 0
    assert all(path.exists() for path in keep) and directory.is_dir()
    assert (outside / ".y.0123456789abcdef.part").exists()
    assert (tmp_path / ".z.0123456789abcdef.part").is_symlink()


def test_a_missing_upload_dir_removes_nothing(tmp_path: Path) -> None:
    assert remove_leftovers(tmp_path / "gone") == 0
