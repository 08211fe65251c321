"""Signed rotating phone passes (scheme ``FFP1``): the format every end shares (docs/passes.md).

A member's phone holds an Ed25519 key pair it made itself; the cloud and the doors know only the
public key. Every ``period_s`` seconds the phone shows a new QR code::

    FFP1:<117 characters of RFC 4648 base32, upper case, no padding>

which decode to 73 bytes: the pass id (5 bytes), the time step (4 bytes, unsigned big-endian) and
an Ed25519 signature (64 bytes) over ``signed_message(organization_id, pass_id, step)``. The time
step is ``floor(unix_seconds / period_s)``. Upper-case base32 and the colon are all in the QR
code's alphanumeric mode, so the whole payload is one alphanumeric segment: 122 characters, a
version 5 symbol (37 x 37 modules) at error correction level M.

Pure code apart from the signature check itself (the ``cryptography`` package's Ed25519): no I/O
and no clock. ``parse_pass_body`` never raises; ``verify_signature`` answers False for any bad key
or signature rather than raising.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

SCHEME = "FFP1"
PASS_ID_BYTES = 5
STEP_BYTES = 4
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
BODY_BYTES = PASS_ID_BYTES + STEP_BYTES + SIGNATURE_BYTES  # 73
# Base32 carries 5 bits a character: 73 bytes are 584 bits, 117 characters (one spare bit, 0).
BODY_CHARS = (BODY_BYTES * 8 + 4) // 5  # 117
# A pass id as text is its 5 bytes in base32: exactly 8 characters, no padding.
PASS_ID_CHARS = PASS_ID_BYTES * 8 // 5  # 8

DEFAULT_PERIOD_S = 15
MIN_PERIOD_S = 5
MAX_PERIOD_S = 300
# A code is accepted while its step is within this many steps of the door's own (either side).
DEFAULT_SKEW_STEPS = 2
MAX_STEP = 2**32 - 1

_BODY = re.compile(f"[A-Z2-7]{{{BODY_CHARS}}}")
PASS_ID_PATTERN = re.compile(f"[A-Z2-7]{{{PASS_ID_CHARS}}}")
_PAD = "=" * (-BODY_CHARS % 8)


@dataclass(frozen=True, slots=True)
class PhonePass:
    """One scanned pass code: which pass (``pass_id``, 8 base32 characters), which time step, and
    the 64-byte signature, not yet checked. Built only by ``parse_pass_body`` or ``pass_payload``."""

    pass_id: str
    step: int
    signature: bytes


def parse_pass_body(rest: str) -> PhonePass | str:
    """The text after ``FFP1:`` to a ``PhonePass``, or a plain-words reason it is not one (never
    quoting the input). Accepts only the canonical form: exactly 117 upper-case base32 characters
    whose unused last bit is 0, so one pass code has exactly one spelling. Never raises."""
    if not isinstance(rest, str):
        return "pass code is not text"
    if len(rest) != BODY_CHARS:
        return f"pass code body is {len(rest)} characters long; it must be {BODY_CHARS}"
    if _BODY.fullmatch(rest) is None:
        return "pass code body contains a character outside upper-case base32 (A-Z, 2-7)"
    try:
        raw = base64.b32decode(rest + _PAD)
    except (binascii.Error, ValueError):
        return "pass code body is not valid base32"
    if len(raw) != BODY_BYTES or _b32(raw) != rest:
        return "pass code body is not in canonical base32 (its last character has stray bits)"
    pass_id = _b32(raw[:PASS_ID_BYTES])
    step = int.from_bytes(raw[PASS_ID_BYTES : PASS_ID_BYTES + STEP_BYTES], "big")
    return PhonePass(pass_id, step, raw[PASS_ID_BYTES + STEP_BYTES :])


def pass_id_bytes(pass_id: str) -> bytes:
    """The 5 bytes a pass id (8 base32 characters) stands for. Raises ValueError otherwise."""
    if not isinstance(pass_id, str) or PASS_ID_PATTERN.fullmatch(pass_id) is None:
        raise ValueError(f"a pass id is {PASS_ID_CHARS} characters from A-Z and 2-7")
    return base64.b32decode(pass_id)


def pass_id_text(raw: bytes) -> str:
    """5 bytes to the pass id text. Raises ValueError for another length."""
    if len(raw) != PASS_ID_BYTES:
        raise ValueError(f"a pass id is {PASS_ID_BYTES} bytes")
    return _b32(raw)


def signed_message(organization_id: str, pass_id: str, step: int) -> bytes:
    """The bytes a pass code's signature covers: ``FFP1``, 0x00, the organisation id (UTF-8),
    0x00, the pass id's 5 bytes, the step as 4 bytes big-endian. The organisation id binds a code
    to one gym chain, so a pass made for another organisation never verifies here even if its
    id collides with one of ours. Raises ValueError for a bad pass id or step."""
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"a time step is 0 to {MAX_STEP}")
    if "\x00" in organization_id:
        raise ValueError("an organisation id cannot contain NUL")
    return b"".join(
        (
            SCHEME.encode("ascii"),
            b"\x00",
            organization_id.encode("utf-8"),
            b"\x00",
            pass_id_bytes(pass_id),
            step.to_bytes(STEP_BYTES, "big"),
        )
    )


def step_at(unix_seconds: float, period_s: int) -> int:
    """The time step at ``unix_seconds``: ``floor(unix_seconds / period_s)``."""
    return int(unix_seconds // period_s)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key`` (32
    raw bytes). Any malformed key or signature is simply False. About 60-100 us on a laptop."""
    # Imported here so parsing a payload never pays for loading the crypto library.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def pass_payload(private_key: object, organization_id: str, pass_id: str, step: int) -> str:
    """The reference encoder: the full ``FFP1:...`` text a phone shows for ``step``, signed with
    ``private_key`` (a ``cryptography`` ``Ed25519PrivateKey``). The pass page does the same in
    the browser with WebCrypto; tests, the demo and the bench use this. Raises ValueError for a
    bad pass id or step."""
    signature = private_key.sign(signed_message(organization_id, pass_id, step))  # type: ignore[attr-defined]
    raw = pass_id_bytes(pass_id) + step.to_bytes(STEP_BYTES, "big") + signature
    return f"{SCHEME}:{_b32(raw)}"


def public_key_text(raw: bytes) -> str:
    """A 32-byte public key as wire text: unpadded base64url, 43 characters."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}")


def public_key_from_text(text: object) -> bytes:
    """Wire text (43 characters of unpadded base64url) to the 32 key bytes, canonical form only.
    Raises ValueError saying what is wrong."""
    if not isinstance(text, str) or _KEY_TEXT.fullmatch(text) is None:
        raise ValueError("a public key is 43 characters of unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "=")
    if public_key_text(raw) != text:
        raise ValueError("a public key is not in canonical base64url")
    return raw


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")
