"""The door's check of a signed phone pass, before the access policy (docs/passes.md).

``check_pass`` is pure: the scanned code, the pass's replica record, the door's effective time and
whether this door has already seen the same (pass, step) in, a typed answer out. Checks, in order;
the first that fails gives the one reason:

1. no record for the pass id, or the pass is revoked -> ``unknown_code`` (as for an unknown card);
2. the signature, with the record's public key over ``sync.passes.signed_message`` and the
   record's organisation -> ``bad_signature`` (forged, truncated or made for another
   organisation);
3. no trusted time (``when`` is None) -> ``clock_untrusted``;
4. the step more than ``skew_steps`` steps away from the door's own step, either side ->
   ``token_expired``;
5. the same (pass, step) already used at this door -> ``token_replayed`` (a screenshot shown
   again, even after a restart: the door keeps used pairs in its journal file).

The signature comes before time and replay so that nobody without the key can learn anything
from the answer, and so a forged code can never fill the replay memory. An accepted pass gives the
member whose access rules (``kiosk.core.policy.decide``) then apply as for a card.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kiosk.core.model import Decision, Reason, Verdict
from sync.passes import DEFAULT_SKEW_STEPS, PhonePass, signed_message, step_at, verify_signature

# Used pairs are pruned this long after ``PassAccepted.keep_until``: a clock corrected backwards by
# a few minutes after the pair was written must not make the same code usable again.
PRUNE_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class PassRecord:
    """A pass as the replica holds it. ``public_key`` is the 32 raw Ed25519 bytes; ``period_s``
    is the pass's rotation period in seconds, fixed when it was activated."""

    pass_id: str
    member_id: str
    organization_id: str
    public_key: bytes
    period_s: int
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class PassAccepted:
    """A pass code that passed every check: ``member_id`` goes on to the access policy. The door
    must remember (``pass_id``, ``step``) until ``keep_until`` (UTC), after which the step is
    outside every window and the pair can be pruned."""

    pass_id: str
    member_id: str
    step: int
    keep_until: datetime


def check_pass(
    scanned: PhonePass,
    record: PassRecord | None,
    when: datetime | None,
    *,
    used: bool,
    skew_steps: int = DEFAULT_SKEW_STEPS,
) -> PassAccepted | Decision:
    """Check one scanned pass code (see the module docstring for the order). ``when`` is the
    door's effective UTC time (``kiosk.core.policy.effective_time``), None when the clock cannot be
    trusted. Returns ``PassAccepted`` or a denied ``Decision``; never raises for any record or
    code (a record with a malformed key is a bad signature)."""
    if record is None or record.pass_id != scanned.pass_id:
        return _denied(Reason.UNKNOWN_CODE, None, "no pass with this id at this door")
    if record.revoked:
        return _denied(Reason.UNKNOWN_CODE, None, "this pass was revoked")
    try:
        message = signed_message(record.organization_id, scanned.pass_id, scanned.step)
    except ValueError:
        message = None
    if message is None or not verify_signature(record.public_key, message, scanned.signature):
        return _denied(
            Reason.BAD_SIGNATURE, None, "the pass code's signature does not match the pass's key"
        )
    if when is None:
        return _denied(
            Reason.CLOCK_UNTRUSTED,
            record.member_id,
            "the door's clock is not set, so a rotating pass cannot be dated",
        )
    period = record.period_s
    current = step_at(when.timestamp(), period)
    drift = scanned.step - current
    if abs(drift) > skew_steps:
        side = "old" if drift < 0 else "ahead of the door's clock"
        return _denied(
            Reason.TOKEN_EXPIRED,
            record.member_id,
            f"the pass code is {abs(drift) * period} s {side}; "
            f"codes are accepted within {skew_steps * period} s",
        )
    if used:
        return _denied(
            Reason.TOKEN_REPLAYED,
            record.member_id,
            "this pass code was already used at this door (a copy or screenshot)",
        )
    keep_until = datetime.fromtimestamp((scanned.step + skew_steps + 1) * period, UTC)
    return PassAccepted(scanned.pass_id, record.member_id, scanned.step, keep_until)


def _denied(reason: Reason, member_id: str | None, detail: str) -> Decision:
    return Decision(Verdict.DENIED, reason, member_id=member_id, detail=detail)
