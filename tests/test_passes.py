"""The signed phone pass: its wire format (sync.passes) and the door's check (kiosk.core.passes)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.core.model import Decision, Reason
from kiosk.core.passes import PassAccepted, PassRecord, check_pass
from sync.credentials import Malformed, parse_payload
from sync.passes import (
    BODY_CHARS,
    PhonePass,
    parse_pass_body,
    pass_id_bytes,
    pass_payload,
    public_key_from_text,
    public_key_text,
    signed_message,
    step_at,
    verify_signature,
)

ORG = "org-1"
PASS_ID = "ABCDEFG2"  # noqa: S105 - a pass id, not a secret
PERIOD = 15
# A fixed key, so failures reproduce (Ed25519 signatures are deterministic).
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes_raw()
WHEN = datetime(2026, 12, 2, 12, 0, 7, tzinfo=UTC)
STEP = step_at(WHEN.timestamp(), PERIOD)
RECORD = PassRecord(PASS_ID, "m-1", ORG, PUBLIC, PERIOD)


def scanned(payload: str) -> PhonePass:
    credential = parse_payload(payload)
    assert isinstance(credential, PhonePass), credential
    return credential


def test_a_signed_code_round_trips_through_the_payload_parser() -> None:
    payload = pass_payload(KEY, ORG, PASS_ID, STEP)
    assert len(payload) == 5 + BODY_CHARS == 122
    code = scanned(payload)
    assert (code.pass_id, code.step) == (PASS_ID, STEP)
    assert verify_signature(PUBLIC, signed_message(ORG, PASS_ID, STEP), code.signature)


def test_the_payload_is_one_alphanumeric_segment_of_a_version_5_symbol() -> None:
    qr = segno.make_qr(pass_payload(KEY, ORG, PASS_ID, STEP), error="M", boost_error=False)
    assert qr.mode == "alphanumeric"
    assert qr.version == 5


def test_the_signed_message_is_documented_bytes() -> None:
    message = signed_message("org-1", "AAAAAAAB", 258)
    assert message == b"FFP1\x00org-1\x00\x00\x00\x00\x00\x01\x00\x00\x01\x02"


@pytest.mark.parametrize("bad", ["", "ABCDEFG", "ABCDEFGH1", "abcdefgh", "ABCDEFG8"])
def test_pass_ids_are_eight_base32_characters(bad: str) -> None:
    with pytest.raises(ValueError):
        pass_id_bytes(bad)


def test_public_keys_travel_as_canonical_base64url() -> None:
    text = public_key_text(PUBLIC)
    assert len(text) == 43 and public_key_from_text(text) == PUBLIC
    for bad in (text[:-1], text + "A", text[:-1] + "+", None, 42):
        with pytest.raises(ValueError):
            public_key_from_text(bad)


def test_accepted_within_the_window_either_side() -> None:
    for drift in (-2, -1, 0, 1, 2):
        code = scanned(pass_payload(KEY, ORG, PASS_ID, STEP + drift))
        result = check_pass(code, RECORD, WHEN, used=False)
        assert isinstance(result, PassAccepted), (drift, result)
        assert result.member_id == "m-1"
        # Remembered until the step has left every window: (step + 2 + 1) periods.
        assert result.keep_until == datetime.fromtimestamp((STEP + drift + 3) * PERIOD, UTC)


@pytest.mark.parametrize("drift", [-3, 3, -1000, 1000])
def test_a_step_outside_the_window_is_expired(drift: int) -> None:
    code = scanned(pass_payload(KEY, ORG, PASS_ID, STEP + drift))
    assert reason(check_pass(code, RECORD, WHEN, used=False)) is Reason.TOKEN_EXPIRED


def test_a_used_pair_is_replayed() -> None:
    code = scanned(pass_payload(KEY, ORG, PASS_ID, STEP))
    assert reason(check_pass(code, RECORD, WHEN, used=True)) is Reason.TOKEN_REPLAYED


def test_unknown_and_revoked_passes_are_unknown_codes() -> None:
    code = scanned(pass_payload(KEY, ORG, PASS_ID, STEP))
    assert reason(check_pass(code, None, WHEN, used=False)) is Reason.UNKNOWN_CODE
    revoked = PassRecord(PASS_ID, "m-1", ORG, PUBLIC, PERIOD, revoked=True)
    result = check_pass(code, revoked, WHEN, used=False)
    assert reason(result) is Reason.UNKNOWN_CODE and "revoked" in result.detail  # type: ignore[union-attr]


def test_forged_foreign_and_wrong_key_codes_are_bad_signatures() -> None:
    other_key = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    cases = {
        "wrong key": pass_payload(other_key, ORG, PASS_ID, STEP),
        "another organisation": pass_payload(KEY, "org-2", PASS_ID, STEP),
        "another pass's code": pass_payload(KEY, ORG, "ABCDEFG3", STEP),
    }
    for name, payload in cases.items():
        code = scanned(payload)
        code = PhonePass(PASS_ID, code.step, code.signature)  # as if the id were rewritten
        assert reason(check_pass(code, RECORD, WHEN, used=False)) is Reason.BAD_SIGNATURE, name
    # A signature for one step does not cover another (the step is rewritten in the payload).
    good = scanned(pass_payload(KEY, ORG, PASS_ID, STEP))
    moved = PhonePass(PASS_ID, STEP + 1, good.signature)
    assert reason(check_pass(moved, RECORD, WHEN, used=False)) is Reason.BAD_SIGNATURE


def test_a_forged_code_is_refused_before_time_and_replay_are_looked_at() -> None:
    forged = PhonePass(PASS_ID, STEP + 10_000, bytes(64))
    assert reason(check_pass(forged, RECORD, None, used=True)) is Reason.BAD_SIGNATURE


def test_an_untrusted_clock_refuses_a_genuine_code() -> None:
    code = scanned(pass_payload(KEY, ORG, PASS_ID, STEP))
    assert reason(check_pass(code, RECORD, None, used=False)) is Reason.CLOCK_UNTRUSTED


def test_a_record_with_a_broken_key_is_a_bad_signature_not_a_crash() -> None:
    code = scanned(pass_payload(KEY, ORG, PASS_ID, STEP))
    for key in (b"", b"\x00" * 31, b"\xff" * 32):
        broken = PassRecord(PASS_ID, "m-1", ORG, key, PERIOD)
        assert reason(check_pass(code, broken, WHEN, used=False)) is Reason.BAD_SIGNATURE


def test_the_period_is_the_pass_records() -> None:
    slow = PassRecord(PASS_ID, "m-1", ORG, PUBLIC, 60)
    step = step_at((WHEN - timedelta(seconds=100)).timestamp(), 60)
    code = scanned(pass_payload(KEY, ORG, PASS_ID, step))
    assert isinstance(check_pass(code, slow, WHEN, used=False), PassAccepted)
    # The period is not signed; the same code judged with a 15 s period is far out of the window.
    assert reason(check_pass(code, RECORD, WHEN, used=False)) is Reason.TOKEN_EXPIRED


# -- hostile input: only typed results, never an exception ------------------------------------------

base32_chars = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


@settings(max_examples=2000)
@given(st.text(alphabet=base32_chars, min_size=BODY_CHARS, max_size=BODY_CHARS))
def test_any_well_formed_body_parses_or_is_refused_in_words(body: str) -> None:
    result = parse_pass_body(body)
    assert isinstance(result, PhonePass | str)
    if isinstance(result, PhonePass):
        # Canonical: exactly one spelling per code.
        raw = base64.b32decode(body + "===")
        assert base64.b32encode(raw).decode().rstrip("=") == body
        # Random bytes are never a valid signature by our key.
        record = PassRecord(result.pass_id, "m-1", ORG, PUBLIC, PERIOD)
        assert reason(check_pass(result, record, WHEN, used=False)) is Reason.BAD_SIGNATURE


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_any_bytes_after_the_scheme_are_typed(rest: bytes) -> None:
    result = parse_payload(b"FFP1:" + rest)
    assert isinstance(result, Malformed | PhonePass)


def reason(result: PassAccepted | Decision) -> Reason:
    assert isinstance(result, Decision), result
    return result.reason


def test_a_fuzz_run_finds_only_typed_results_and_no_forged_acceptance() -> None:
    from devtools.fuzz_passes import run

    counts, bad, why = run(20_000, seed=3)
    assert bad is None, why
    # The run reached every stage: refused forms, every token reason, and genuine codes accepted.
    for result in ("malformed", "unknown_code", "bad_signature", "token_expired", "accepted"):
        assert counts[result] > 0, counts
