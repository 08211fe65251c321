"""The credential parser: a table of payloads, then properties over arbitrary hostile input."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.credentials import (
    MAX_PAYLOAD_BYTES,
    SCHEME_PARSERS,
    Malformed,
    StaticCode,
    code_hash,
    parse_payload,
)

VALID = [
    ("short", b"abcd", "abcd"),
    ("longest", b"a" * 64, "a" * 64),
    ("mixed alphabet", b"Gym-01_tag.7Z", "Gym-01_tag.7Z"),
    ("uuid-like", b"3f1c2a9e-5b7d-4c1e-9a2b-0d6e8f1a2b3c", "3f1c2a9e-5b7d-4c1e-9a2b-0d6e8f1a2b3c"),
    ("text input", "MEMBER-0042", "MEMBER-0042"),
    ("bytearray input", bytearray(b"key.tag.9"), "key.tag.9"),
    ("scanner CR LF", b"ABCD1234\r\n", "ABCD1234"),
    ("padding spaces and tab", b" \tABCD1234 ", "ABCD1234"),
    ("all punctuation allowed", b"._-.", "._-."),
]


@pytest.mark.parametrize(("raw", "code"), [(r, c) for _, r, c in VALID], ids=[i for i, *_ in VALID])
def test_valid_static_codes(raw: bytes | str, code: str) -> None:
    assert parse_payload(raw) == StaticCode(code)


# (id, payload, a word that must appear in why)
INVALID = [
    ("empty", b"", "empty"),
    ("only whitespace", b" \r\n\t ", "empty"),
    ("too short", b"abc", "3 characters"),
    ("too long for a static code", b"a" * 65, "65 characters"),
    ("over the byte limit", b"a" * (MAX_PAYLOAD_BYTES + 1), "limit"),
    ("text over the limit", "a" * (MAX_PAYLOAD_BYTES + 1), "513 characters long"),
    ("multi-byte text over the byte limit", "é" * 300, "600 bytes"),
    ("space inside", b"ab cd", "character other than"),
    ("slash", b"abc/def", "character other than"),
    ("html", b"<script>alert(1)</script>", "character other than"),
    ("sql", b"x' OR '1'='1", "character other than"),
    ("NUL", b"abcd\x00efgh", "outside printable ASCII"),
    ("newline inside (log injection)", b"abcd\nINFO granted", "outside printable ASCII"),
    ("ANSI escape", b"\x1b[31mabcd", "outside printable ASCII"),
    ("DEL", b"abcd\x7f", "outside printable ASCII"),
    ("latin-1 byte", b"abc\xe9", "outside printable ASCII"),
    ("invalid utf-8", b"\xff\xfe\xfd\xfc", "outside printable ASCII"),
    ("non-ASCII text", "Müller-01", "outside printable ASCII"),
    ("lone surrogate", "abcd\ud800efgh", "outside printable ASCII"),
    ("colon without scheme", b"abc:def", "does not start with a credential scheme"),
    ("lower-case scheme", b"ffp1:abc", "does not start with a credential scheme"),
    ("one-letter scheme", b"F:abc", "does not start with a credential scheme"),
    ("nine-character scheme", b"ABCDEFGHI:abc", "does not start with a credential scheme"),
    ("unknown scheme", b"HTTP:abc", "does not know"),
    ("unknown scheme, empty rest", b"ZZ9:", "does not know"),
    ("pass with a JWT-like body", b"FFP1:eyJhbGciOi.payload.sig", "must be 117"),
    ("pass, empty body", b"FFP1:", "must be 117"),
    ("pass, lower-case body", b"FFP1:" + b"a" * 117, "outside upper-case base32"),
    ("pass, digit outside base32", b"FFP1:" + b"A" * 116 + b"8", "outside upper-case base32"),
    ("pass, stray last bit", b"FFP1:" + b"A" * 116 + b"B", "canonical"),
    ("wrong type", 12345, "expected bytes or text"),
    ("None", None, "expected bytes or text"),
]


@pytest.mark.parametrize(
    ("raw", "word"), [(r, w) for _, r, w in INVALID], ids=[i for i, *_ in INVALID]
)
def test_invalid_payloads(raw: object, word: str) -> None:
    result = parse_payload(raw)  # type: ignore[arg-type]
    assert isinstance(result, Malformed)
    assert word in result.why


def test_unknown_scheme_and_bad_pass_are_told_apart() -> None:
    unknown = parse_payload(b"ABC1:xyz")
    bad_pass = parse_payload(b"FFP1:xyz")
    assert isinstance(unknown, Malformed) and isinstance(bad_pass, Malformed)
    assert "pass code" in bad_pass.why
    assert unknown.why != bad_pass.why


def test_length_is_checked_before_content() -> None:
    # Oversized garbage is refused for its size, not for its (unexamined) bytes.
    result = parse_payload(b"\x00" * (MAX_PAYLOAD_BYTES + 1))
    assert isinstance(result, Malformed)
    assert "limit" in result.why
    assert "ASCII" not in result.why


def test_payload_exactly_at_the_limit_is_examined() -> None:
    result = parse_payload(b"a" * MAX_PAYLOAD_BYTES)
    assert isinstance(result, Malformed)
    assert "512 characters" in result.why


def test_registered_scheme_dispatches_to_its_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def parse_test_scheme(rest: str) -> StaticCode | Malformed:
        seen.append(rest)
        return StaticCode(rest)

    monkeypatch.setitem(SCHEME_PARSERS, "TST2", parse_test_scheme)
    assert parse_payload(b"TST2:abcd-1234\r\n") == StaticCode("abcd-1234")
    assert seen == ["abcd-1234"]


@pytest.mark.parametrize("code", ["abc", "a" * 65, "ab cd", "ab:cd", "", "abcé"])
def test_static_code_refuses_invalid_codes_without_quoting_them(code: str) -> None:
    with pytest.raises(ValueError, match="4 to 64 characters") as info:
        StaticCode(code)
    if len(code) >= 4:
        assert code not in str(info.value)


def test_code_hash_is_hmac_sha256_keyed_with_the_salt() -> None:
    expected = hmac.new(b"org-salt", b"MEMBER-0042", hashlib.sha256).hexdigest()
    assert code_hash("MEMBER-0042", b"org-salt") == expected
    assert len(expected) == 64 and expected == expected.lower()


def test_code_hash_depends_on_the_salt_and_the_code() -> None:
    base = code_hash("MEMBER-0042", b"salt-a")
    assert code_hash("MEMBER-0042", b"salt-b") != base
    assert code_hash("MEMBER-0043", b"salt-a") != base
    assert base != hashlib.sha256(b"MEMBER-0042").hexdigest()


def test_code_hash_refuses_a_salt_that_is_not_bytes() -> None:
    with pytest.raises(TypeError, match="salt must be bytes"):
        code_hash("MEMBER-0042", "org-salt")  # type: ignore[arg-type]


# --- properties over hostile input -----------------------------------------------------------

# Every code point, including lone surrogates, which st.text() leaves out by default.
any_character = st.characters(exclude_categories=())
static_codes = st.from_regex(r"[A-Za-z0-9._-]{4,64}", fullmatch=True)


def _check_result(raw: bytes | str) -> None:
    result = parse_payload(raw)
    assert isinstance(result, StaticCode | Malformed)
    if isinstance(result, Malformed):
        assert isinstance(result.why, str) and result.why
        if len(raw) >= 4:
            needle = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
            assert needle not in result.why.encode("utf-8")


@settings(max_examples=500)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_typed_result_that_never_quotes_the_payload(raw: bytes) -> None:
    _check_result(raw)


@settings(max_examples=300)
@given(st.text())
def test_any_text_gives_a_typed_result_that_never_quotes_the_payload(raw: str) -> None:
    _check_result(raw)


@settings(max_examples=300)
@given(st.text(alphabet=any_character, max_size=700))
def test_text_with_surrogates_and_controls_never_raises(raw: str) -> None:
    _check_result(raw)


@settings(max_examples=300)
@given(
    st.sampled_from([*sorted(SCHEME_PARSERS), "ABC", "X1"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=600),
)
def test_every_registered_scheme_handles_random_input(scheme: str, rest: str) -> None:
    _check_result(f"{scheme}:{rest}")


@given(st.binary(min_size=MAX_PAYLOAD_BYTES + 1, max_size=2048))
def test_oversize_bytes_are_rejected_by_length(raw: bytes) -> None:
    result = parse_payload(raw)
    assert isinstance(result, Malformed)
    assert f"{len(raw)} bytes long" in result.why


@given(static_codes, st.sampled_from(["", " ", "\r\n", "\n", "\t "]))
def test_static_codes_round_trip(code: str, padding: str) -> None:
    credential = parse_payload(code + padding)
    assert credential == StaticCode(code)
    assert isinstance(credential, StaticCode)
    assert parse_payload(credential.code) == credential
    assert parse_payload(credential.code.encode("ascii")) == credential
