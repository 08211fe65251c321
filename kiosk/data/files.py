"""Writing the kiosk's own files safely: atomically, with the right mode and owner, never through a
symbolic link.

Secrets (the device token, the owner password's hash) and the config are replaced, never edited in
place: a temporary file in the same folder is written, given its mode and owner through its open
descriptor (so no path is followed), synced, then renamed over the old one. A crash leaves the old
file or the new one, never half of either. As root, a secret file is handed to the owner of its
folder (the service user owns /var/lib/fitflow-kiosk) before it appears under its name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


class SymlinkRefused(OSError):
    """A symbolic link sits where one of the kiosk's files belongs (tampering, or a mistake)."""


def refuse_symlink(path: Path) -> None:
    """Raise SymlinkRefused if ``path`` is a symbolic link."""
    # os.replace would replace a link itself, but one planted where a file of ours belongs is a
    # sign of tampering: stop and say so rather than guess.
    if Path(path).is_symlink():
        raise SymlinkRefused(
            f"{path} is a symbolic link; only a regular file belongs there. Remove the link (and "
            "check who made it), then run the command again; nothing was changed."
        )


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    check: Callable[[Path], None] | None = None,
) -> None:
    """Replace ``path`` with ``data``, given ``mode`` and, when set, ``owner`` (uid, gid); the
    temporary file is passed to ``check`` before the rename (it may raise to stop). Raises
    SymlinkRefused for a link at ``path``, OSError when it cannot be written; nothing changed
    then."""
    path = Path(path)
    refuse_symlink(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            if owner is not None:
                os.fchown(fd, *owner)  # before fchmod: chown may clear set-id bits
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def folder_owner(path: Path) -> tuple[int, int] | None:
    """As root, the (uid, gid) owning ``path``'s folder; None for other users (their files are
    theirs already)."""
    if os.geteuid() != 0:
        return None
    folder = Path(path).parent.stat()
    return folder.st_uid, folder.st_gid


def write_private_file(path: Path, data: bytes) -> None:
    """A secret file (mode 0600), written atomically; its folder is created (0750) if needed, and
    as root the file goes to the folder's owner. Raises SymlinkRefused or OSError (nothing
    changed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    write_atomically(path, data, mode=0o600, owner=folder_owner(path))
