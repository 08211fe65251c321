"""Secrets and ids: device and admin tokens, enrolment codes, row ids, code salts.

Secrets come from ``secrets``; the database keeps only their SHA-256 (hex), and a caller is found
by looking that hash up (an index lookup on a uniformly random value: no timing oracle worth the
name, and nothing usable if the database leaks). A secret is shown once, when it is made, and is
never logged.
"""

from __future__ import annotations

import hashlib
import secrets

# Prefixes make a leaked token recognisable (secret scanners, logs); they are not secrets.
DEVICE_TOKEN_PREFIX = "ffd_"  # noqa: S105
ADMIN_TOKEN_PREFIX = "ffa_"  # noqa: S105
# Enrolment codes are typed by an installer: no 0/O, 1/I/L, 5/S, 8/B look-alikes.
_CODE_ALPHABET = "234679ACDEFGHJKMNPQRTUVWXYZ"
_CODE_GROUPS, _CODE_GROUP_CHARS = 3, 4  # 7KQ4-M2XD-9HVA: 12 characters, about 57 bits


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_id(prefix: str) -> str:
    """A random row id like ``mbr_3f9c1a0b7d2e4c61`` (fits the protocol's id alphabet)."""
    return f"{prefix}_{secrets.token_hex(8)}"


def new_device_token() -> str:
    return DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_code_salt() -> bytes:
    """An organisation's code-hash key: 32 random bytes."""
    return secrets.token_bytes(32)


def new_enrolment_code() -> str:
    groups = (
        "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_GROUP_CHARS))
        for _ in range(_CODE_GROUPS)
    )
    return "-".join(groups)


def enrolment_code_hash(code: str) -> str:
    """The stored form of an enrolment code: case, spaces and dashes do not matter when typed."""
    normal = "".join(ch for ch in code.upper() if ch not in "- \t")
    return sha256_hex("enrol:" + normal)
