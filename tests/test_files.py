"""kiosk.data.files: the kiosk's own files are replaced atomically, privately, never through a link."""

from __future__ import annotations

import os
import stat

import pytest

from kiosk.data.files import SymlinkRefused, write_atomically, write_private_file


def test_a_private_file_is_0600_in_a_new_0750_folder(tmp_path):
    target = tmp_path / "lib" / "secret"
    write_private_file(target, b"token")
    assert target.read_bytes() == b"token"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) & 0o027 == 0
    assert [p.name for p in target.parent.iterdir()] == ["secret"]  # no temporary left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user needs root")
def test_as_root_a_private_file_belongs_to_its_folders_owner(tmp_path):
    folder = tmp_path / "lib"
    folder.mkdir()
    os.chown(folder, 12345, 12345)
    write_private_file(folder / "secret", b"x")
    info = (folder / "secret").stat()
    assert (info.st_uid, info.st_gid) == (12345, 12345)


def test_a_symlink_where_the_file_belongs_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    link = tmp_path / "secret"
    link.symlink_to(target)
    with pytest.raises(SymlinkRefused, match="symbolic link"):
        write_private_file(link, b"new")
    assert target.read_bytes() == b"keep" and link.is_symlink()


def test_a_failed_check_leaves_the_old_file_as_it_was(tmp_path):
    path = tmp_path / "kiosk.toml"
    path.write_bytes(b"old")

    def refuse(_tmp):
        raise ValueError("invalid")

    with pytest.raises(ValueError):
        write_atomically(path, b"new", mode=0o640, check=refuse)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kiosk.toml"]
