"""The owner page's password: set by ``kiosk provision``, checked by ``kiosk web``.

Only a salted, deliberately slow hash is kept (``hashlib.scrypt``), in a file of its own
(``web.password_file``, by default ``/var/lib/fitflow-kiosk/owner-password``) with mode 0600: one
line in the PHC string style ``$scrypt$ln=15,r=8,p=1$<salt>$<hash>`` (base64 without padding). The
cost parameters travel with the hash, so raising them later does not break existing files.

There is no default password: without the file there is no login, and the page must say so. The
password itself is never written, logged or part of an error message.

How ``kiosk web`` uses it::

    encoded = load_password_hash(Path(config.web.password_file))   # PasswordFileError if unusable
    if verify_password(candidate, encoded): ...
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from kiosk.data.files import write_private_file

# scrypt cost: N = 2**15, r = 8 uses 32 MiB and ~0.1 s on a laptop, a few tenths on a Pi 3: slow
# enough to make guessing from a stolen file expensive, cheap enough for a login.
DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P = 15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS = 10, 1024
# Bounds on parameters read back from a file: a tampered file must not make a login eat the RAM.
_MAX_LOG2_N, _MAX_R, _MAX_P = 20, 32, 16
_ENCODED = re.compile(
    r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)


class PasswordError(ValueError):
    """A password that cannot be used (too short, too long, control characters); the message
    says why without quoting it."""


class PasswordFileError(Exception):
    """The password file is missing, unsafe or not a password hash; the message names the file
    and what to do."""


@dataclass(frozen=True, slots=True)
class ScryptParams:
    log2_n: int = DEFAULT_LOG2_N
    r: int = DEFAULT_R
    p: int = DEFAULT_P


def check_password(password: str) -> None:
    """Raise PasswordError when ``password`` is not acceptable as the owner password:
    ``MIN_PASSWORD_CHARS`` to ``MAX_PASSWORD_CHARS`` characters, no control characters."""
    if not isinstance(password, str):
        raise PasswordError("the password must be text")
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordError(
            f"the password is {len(password)} characters long; use at least {MIN_PASSWORD_CHARS}"
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    if any(not ch.isprintable() for ch in password):
        raise PasswordError("the password contains control characters (tab, newline...)")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, params: ScryptParams, length: int) -> bytes:
    n = 1 << params.log2_n
    # OpenSSL refuses unless maxmem covers 128 * r * n bytes plus its own overhead.
    maxmem = 128 * params.r * n * (params.p + 1) + (1 << 20)
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=params.r,
        p=params.p,
        maxmem=maxmem,
        dklen=length,
    )


def hash_password(password: str, params: ScryptParams | None = None) -> str:
    """The encoded salted scrypt hash of ``password`` (a fresh random salt each call). Raises
    PasswordError for an unacceptable password (see ``check_password``)."""
    check_password(password)
    params = params or ScryptParams()
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, params, HASH_BYTES)
    return f"$scrypt$ln={params.log2_n},r={params.r},p={params.p}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    match = _ENCODED.fullmatch(encoded.strip())
    if match is None:
        raise ValueError("not a scrypt password hash")
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError("scrypt parameters out of the accepted range")
    try:
        salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
    except ValueError:
        raise ValueError("salt or hash is not base64") from None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("salt or hash has the wrong length")
    return ScryptParams(log2_n, r, p), salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (from ``hash_password``); False for a wrong
    password and for anything that is not a valid hash (never raises for bad input). Compares in
    constant time."""
    if not isinstance(password, str) or not isinstance(encoded, str):
        return False
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        params, salt, digest = _parse(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, params, len(digest)), digest)


def save_password_hash(path: Path, encoded: str) -> None:
    """Write the hash atomically with mode 0600 (a temporary file in the same folder, synced,
    renamed over ``path``); creates the folder (0750) if needed. Raises PasswordFileError when it
    cannot be written (then nothing changed)."""
    path = Path(path)
    _parse(encoded)  # a programming error if it is not a hash: never write garbage
    try:
        write_private_file(path, (encoded + "\n").encode("ascii"))
    except OSError as exc:
        raise PasswordFileError(
            f"cannot write the owner password file {path}: {exc.strerror or exc}. Check that its "
            f"folder exists and that you may write there (run provisioning with sudo)."
        ) from None


def load_password_hash(path: Path) -> str:
    """The encoded hash stored at ``path``. Raises PasswordFileError when the file does not exist
    (no password set: run ``kiosk provision``), is readable or writable by group or others, is not
    a regular file, or does not hold a valid hash."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise PasswordFileError(
            f"{path} does not exist: no owner password is set (there is no default). Set one "
            f"with `sudo kiosk provision`."
        ) from None
    except OSError as exc:
        raise PasswordFileError(
            f"cannot open the owner password file {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PasswordFileError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise PasswordFileError(
                f"{path} is readable or writable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); fix it with `chmod 600 {path}` and consider "
                f"setting a new password with `sudo kiosk provision`."
            )
        data = handle.read(4096)
    try:
        encoded = data.decode("ascii").strip()
        _parse(encoded)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PasswordFileError(
            f"{path} does not hold an owner password hash ({exc}); set the password again with "
            f"`sudo kiosk provision`."
        ) from None
    return encoded


def password_is_set(path: Path) -> bool:
    """True when ``path`` holds a usable password hash."""
    try:
        load_password_hash(path)
    except PasswordFileError:
        return False
    return True
