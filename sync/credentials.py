"""Scanned payloads in, typed credentials out (docs/architecture.md#credentials).

Every payload a camera reads is hostile: anyone can print a QR code. ``parse_payload`` therefore
never raises, caps the length before looking at the content, accepts printable ASCII only, and
answers with either a typed credential or ``Malformed``. ``Malformed.why`` describes what is wrong
in plain words and never quotes the payload, so it is safe to show on the owner page, write to a log
or send to the cloud.

Payload forms:

- ``StaticCode``: printed member cards and key tags, 4 to 64 characters from ``A-Z a-z 0-9 . _ -``
  (no colon). Whitespace and CR/LF around the code, which some scanners add, are stripped.
- ``SCHEME:rest``: a typed credential, ``SCHEME`` being a capital letter followed by 1 to 7 capital
  letters or digits. The scheme picks a parser from ``SCHEME_PARSERS``. An unknown scheme is
  malformed. ``FFP1`` is the signed rotating phone pass (``PhonePass``, format in
  ``sync.passes`` and docs/passes.md); parsing checks its form only, the signature is checked at
  the door against the replicated public key.

Adding a credential type takes three steps:

1. a frozen dataclass for it below, added to the ``Credential`` union;
2. a parser function ``(rest: str) -> Credential | Malformed`` that gets the text after the colon
   (printable ASCII, already length-capped). It must return ``Malformed`` for bad input and never
   raise; the property tests in ``tests/test_credentials.py`` run random input through every
   registered scheme to check that;
3. an entry ``"SCHEME": parser`` in ``SCHEME_PARSERS``.

The replica stores ``code_hash(code, salt)`` instead of the code itself (see ``code_hash``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from sync.passes import PhonePass, parse_pass_body

# Longer than any credential we issue (a static code is at most 64 characters, a signed pass
# 122), short enough that a hostile code costs next to nothing to reject.
MAX_PAYLOAD_BYTES = 512

STATIC_CODE_MIN_CHARS = 4
STATIC_CODE_MAX_CHARS = 64

_STATIC_CODE = re.compile(r"[A-Za-z0-9._-]{4,64}")
_STATIC_CODE_ALPHABET = re.compile(r"[A-Za-z0-9._-]*")
_SCHEME_FORM = re.compile(r"([A-Z][A-Z0-9]{1,7}):(.*)", re.DOTALL)
# Printable ASCII is 0x20 (space) to 0x7E (tilde); everything else, including control characters
# that could rewrite a terminal or split a log line, is refused.
_NOT_PRINTABLE_ASCII = re.compile(rb"[^\x20-\x7e]")
# Scanners end a read with CR/LF or pad with spaces or tabs; nothing else is stripped.
_SCANNER_PADDING = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class StaticCode:
    """The code printed on a member card or key tag. Constructing one with a code outside the
    static-code format raises ``ValueError``, so every ``StaticCode`` in the program is valid."""

    code: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or _STATIC_CODE.fullmatch(self.code) is None:
            # The value is deliberately left out of the message: it may come from a scanned payload.
            raise ValueError(
                "StaticCode.code must be 4 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
            )


@dataclass(frozen=True, slots=True)
class Malformed:
    """A payload that is not a credential. ``why`` says what is wrong (length, alphabet, format) in
    plain words and never contains the payload or any part of it."""

    why: str


# Add new credential dataclasses to this union (see the module docstring).
Credential = StaticCode | PhonePass

SchemeParser = Callable[[str], Credential | Malformed]


def _phone_pass(rest: str) -> Credential | Malformed:
    """``FFP1``: a signed rotating pass; its form only (``sync.passes.parse_pass_body``)."""
    parsed = parse_pass_body(rest)
    return Malformed(parsed) if isinstance(parsed, str) else parsed


SCHEME_PARSERS: dict[str, SchemeParser] = {
    "FFP1": _phone_pass,
}


def parse_payload(raw: bytes | str) -> Credential | Malformed:
    """Turn one scanned payload into a credential, or say why it is not one.

    ``raw`` is the decoder's bytes or a text string; text is encoded as UTF-8 (lone surrogates kept
    as their own non-ASCII bytes, so they are refused like any other non-ASCII character) and then
    treated exactly like bytes. The length limit ``MAX_PAYLOAD_BYTES`` is checked before anything
    else. Never raises, whatever the input; anything that is not a credential, including input of
    the wrong type, comes back as ``Malformed``.
    """
    if isinstance(raw, str):
        # A character is at least one UTF-8 byte, so an over-long string is refused before the
        # cost of encoding it is paid.
        if len(raw) > MAX_PAYLOAD_BYTES:
            return _too_long(len(raw), unit="characters")
        data = raw.encode("utf-8", errors="surrogatepass")
    elif isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_PAYLOAD_BYTES:
            return _too_long(len(raw), unit="bytes")
        data = bytes(raw)
    else:
        return Malformed(f"payload is of type {type(raw).__name__}, expected bytes or text")
    if len(data) > MAX_PAYLOAD_BYTES:
        return _too_long(len(data), unit="bytes")

    data = data.strip(_SCANNER_PADDING)
    if not data:
        return Malformed("payload is empty")
    bad = _NOT_PRINTABLE_ASCII.search(data)
    if bad is not None:
        count = len(_NOT_PRINTABLE_ASCII.findall(data))
        return Malformed(
            f"payload contains {count} byte(s) outside printable ASCII "
            f"(first at position {bad.start()}); only characters 0x20 to 0x7E are accepted"
        )
    text = data.decode("ascii")

    if ":" in text:
        return _parse_scheme_form(text)
    return _parse_static_code(text)


def code_hash(code: str, salt: bytes) -> str:
    """HMAC-SHA256 of ``code`` (UTF-8) keyed with ``salt``, as 64 lowercase hex digits.

    The replica stores this, never the usable code; the scanner hashes the code it just
    read and looks the hash up. The key is a per-organisation salt delivered with the replica, so a
    table precomputed over likely codes is useless, and one computed for one organisation does not
    work for another: whoever copies a stolen SD card has to brute-force each organisation's codes
    separately instead of reading them off. Honestly, the salt lives on the same device, so this
    slows an attacker down; it is not encryption, and short or guessable codes stay guessable.

    An empty salt is accepted, because the door loop hashes before the first replica (and its
    salt) has arrived, when no member can match anyway; a replica delivered without a salt must be
    refused where replicas are checked, not here. Raises ``TypeError`` if ``salt`` is not bytes.
    ``code`` must be encodable as UTF-8, which every ``StaticCode`` is.
    """
    if not isinstance(salt, bytes | bytearray):
        raise TypeError(f"code_hash: salt must be bytes, got {type(salt).__name__}")
    return hmac.new(bytes(salt), code.encode("utf-8"), hashlib.sha256).hexdigest()


def _too_long(size: int, *, unit: str) -> Malformed:
    return Malformed(f"payload is {size} {unit} long; the limit is {MAX_PAYLOAD_BYTES} bytes")


def _parse_scheme_form(text: str) -> Credential | Malformed:
    match = _SCHEME_FORM.fullmatch(text)
    if match is None:
        return Malformed(
            "payload contains a colon but does not start with a credential scheme "
            "(a capital letter, then 1 to 7 capital letters or digits, then ':'); "
            "static codes may not contain a colon"
        )
    scheme, rest = match.group(1), match.group(2)
    parser = SCHEME_PARSERS.get(scheme)
    if parser is None:
        # The scheme name is part of the payload, so it is not repeated here.
        return Malformed("payload names a credential scheme this version does not know")
    return parser(rest)


def _parse_static_code(text: str) -> Credential | Malformed:
    if not STATIC_CODE_MIN_CHARS <= len(text) <= STATIC_CODE_MAX_CHARS:
        return Malformed(
            f"static code is {len(text)} characters long; it must be "
            f"{STATIC_CODE_MIN_CHARS} to {STATIC_CODE_MAX_CHARS}"
        )
    if _STATIC_CODE_ALPHABET.fullmatch(text) is None:
        return Malformed(
            "static code contains a character other than letters, digits, '.', '_' and '-'"
        )
    return StaticCode(text)
