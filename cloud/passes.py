"""Phone passes in the cloud (docs/passes.md): activation codes, activation, status, listing and
revocation.

An admin makes an **activation code** for a member (16 characters of base32, 80 random bits,
single use, valid 15 minutes by default and at most a day); the member opens the pass page with it
(``/pass/#activate=<code>``: the code stays in the URL fragment, which browsers never send), the
phone makes an Ed25519 key pair and sends the code with the public key. **Activation** spends the
code with one conditional UPDATE (of two phones racing for one code exactly one wins), then, under
the organisation's version lock like every replica write, checks the member's limit of ACTIVE
passes again, picks a random 5-byte pass id unused in the organisation and stores the pass as a
replica row (kind ``pass``): the doors get it with their next pull. A refused activation (too many
passes, the member deleted meanwhile) rolls back and leaves the code unspent.

Codes are stored only as SHA-256 hashes and never logged; an unknown, used or expired code gets one
and the same answer (410), so the answer says nothing about which codes exist.

**Status** lets a phone that is online ask about its own pass: a current pass code proves it holds
the key, so the answer (ACTIVE or REVOKED, the cloud's time) goes only to the pass's holder.
**Revoking** a pass sets its status to REVOKED in a new version: doors refuse it after their next
pull. A deleted member's passes become tombstones with the member (``admin.delete_member``).
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cloud import admin, db, tokens
from cloud.errors import BadRequest, Clash, Invalid, NotFound, ServiceError
from sync.passes import (
    DEFAULT_SKEW_STEPS,
    PASS_ID_BYTES,
    SCHEME,
    PhonePass,
    parse_pass_body,
    pass_id_text,
    public_key_from_text,
    signed_message,
    step_at,
    verify_signature,
)
from sync.protocol import utc_text

ACTIVATION_CODE_BYTES = 10  # 80 bits: 16 base32 characters, no padding
DEFAULT_ACTIVATION_TTL_MINUTES = 15
MAX_ACTIVATION_TTL_MINUTES = 24 * 60
# Where the pass page takes an activation code: in the fragment, never sent to any server.
ACTIVATION_PATH = "/pass/#activate="
# A new pass id is 40 random bits; a collision within one organisation is a one-in-billions
# event, so a few tries always suffice.
_PASS_ID_ATTEMPTS = 8
_CODE = re.compile(r"[A-Z2-7]{16}")
_ACTIVATE_KEYS = frozenset({"code", "public_key"})
_STATUS_KEYS = frozenset({"code"})
# The longest text field we look at: a pass code is 122 characters.
_MAX_FIELD_CHARS = 256


class ActivationInvalid(ServiceError):
    """One answer for an unknown, used or expired activation code (410)."""

    status, code = 410, "activation_invalid"


class TooManyPasses(Clash):
    """The member already holds the most ACTIVE passes the organisation allows (409)."""

    code = "too_many_passes"


class BadPassSignature(ServiceError):
    """The pass code's signature does not verify with the pass's public key (403)."""

    status, code = 403, "bad_signature"


class PassCodeExpired(ServiceError):
    """A genuine pass code whose time step is outside the window around the cloud's (403). The
    answer carries the cloud's time and the pass's period, so the page can tell the member that
    the phone's clock is wrong and by how much."""

    status, code = 403, "code_expired"

    def __init__(self, detail: str, *, server_time: str, period_s: int) -> None:
        super().__init__(detail)
        self.server_time = server_time
        self.period_s = period_s

    def body(self) -> dict[str, object]:
        return {**super().body(), "server_time": self.server_time, "period_s": self.period_s}


_INVALID_CODE = (
    "this activation code is unknown, already used or expired: ask the gym for a new one"
)


# -- codes -----------------------------------------------------------------------------------------


def new_activation_code() -> str:
    """16 characters of upper-case base32 (A-Z, 2-7): 80 random bits."""
    return base64.b32encode(secrets.token_bytes(ACTIVATION_CODE_BYTES)).decode("ascii")


def activation_code_hash(code: str) -> str:
    """The stored form of an activation code (SHA-256, hex, domain-separated from other
    secrets). ``code`` is the canonical 16-character form (``normal_code``)."""
    return tokens.sha256_hex("pass-activation:" + code)


def normal_code(text: str) -> str | None:
    """An activation code as typed or pasted, in canonical form: case, spaces and dashes do not
    matter. None if it is not 16 base32 characters then."""
    normal = "".join(ch for ch in text.upper() if ch not in "- \t")
    return normal if _CODE.fullmatch(normal) else None


# -- admin: activation codes, listing, revocation --------------------------------------------------


def _settings(tx: db.Tx, org_id: str) -> dict[str, Any]:
    settings = db.pass_settings(tx, org_id)
    if settings is None:
        raise NotFound(f"no organisation {org_id}")
    return settings


def _check_limit(tx: db.Tx, org_id: str, member_id: str, settings: dict[str, Any]) -> None:
    most = int(settings["max_live_passes"])
    held = db.live_pass_count(tx, org_id, member_id)
    if held >= most:
        raise TooManyPasses(
            f"member {member_id} already has {held} active phone pass(es), the most this "
            f"organisation allows ({most}): revoke one first"
        )


def create_activation(
    tx: db.Tx, org_id: str, member_id: str, ttl_minutes: int, now: datetime
) -> dict[str, Any]:
    """A single-use activation code for one new phone pass of a live member, valid
    ``ttl_minutes`` (1..1440). The code is in this answer only; the database keeps its hash.
    NotFound for an unknown or deleted member, TooManyPasses when the member already holds
    ``max_live_passes`` ACTIVE passes, Invalid for a bad ``ttl_minutes``."""
    admin.get_member(tx, org_id, member_id)
    if (
        not isinstance(ttl_minutes, int)
        or isinstance(ttl_minutes, bool)
        or not 1 <= ttl_minutes <= MAX_ACTIVATION_TTL_MINUTES
    ):
        raise Invalid([("ttl_minutes", f"expected 1..{MAX_ACTIVATION_TTL_MINUTES} minutes")])
    _check_limit(tx, org_id, member_id, _settings(tx, org_id))
    code = new_activation_code()
    expires = utc_text(now + timedelta(minutes=ttl_minutes))
    db.insert_pass_activation(
        tx, activation_code_hash(code), org_id, member_id, utc_text(now), expires
    )
    return {
        "code": code,
        "expires_at": expires,
        "member_id": member_id,
        "activation_path": ACTIVATION_PATH + code,
    }


def pass_view(row: dict[str, Any]) -> dict[str, Any]:
    """A pass for the admin: never its public key (nothing secret, but nothing to act on)."""
    return {
        "id": row["id"],
        "member_id": row["member_id"],
        "status": row["status"],
        "period_s": int(row["period_s"]),
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
        "version": int(row["version"]),
    }


def list_passes(tx: db.Tx, org_id: str, member_id: str) -> dict[str, Any]:
    """A live member's passes, active and revoked, oldest first. NotFound for another member."""
    admin.get_member(tx, org_id, member_id)
    return {"items": [pass_view(r) for r in db.member_passes(tx, org_id, member_id)], "next": None}


def _live_pass(tx: db.Tx, org_id: str, pass_id: str) -> dict[str, Any]:
    row = db.replica_row(tx, "pass", org_id, pass_id)
    if row is None or row["deleted"]:
        raise NotFound(f"no pass {pass_id}")
    return row


def revoke_pass(tx: db.Tx, org_id: str, pass_id: str, now: datetime) -> dict[str, Any]:
    """Set a pass's status to REVOKED in a new version, so every door refuses it after its next
    pull. Revoking a revoked pass changes nothing (no new version). NotFound for an unknown or
    deleted pass."""
    if _live_pass(tx, org_id, pass_id)["status"] == "REVOKED":
        return pass_view(_live_pass(tx, org_id, pass_id))
    version = db.bump_version(tx, org_id)
    # Read again under the version lock: a revocation that committed meanwhile is kept as it is.
    current = _live_pass(tx, org_id, pass_id)
    if current["status"] == "REVOKED":
        return pass_view(current)
    stamp = utc_text(now)
    data = {**_row_data(current), "status": "REVOKED"}
    row = admin.validated("pass", pass_id, data)
    extra = {"created_at": current["created_at"], "revoked_at": stamp}
    admin.store_row(tx, org_id, row, gym_id=None, version=version, now=stamp, extra=extra)
    return pass_view(_live_pass(tx, org_id, pass_id))


def _row_data(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "member_id": row["member_id"],
        "organization_id": row["organization_id"],
        "public_key": row["public_key"],
        "period_s": int(row["period_s"]),
        "status": row["status"],
    }


# -- the member's phone: activation and status -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivateRequest:
    """A parsed ``POST /pass/v1/activate`` body: the canonical activation code and the phone's
    public key as wire text (43 characters of base64url)."""

    code: str
    public_key: str

    def __repr__(self) -> str:  # the code is a secret until spent: never in a repr or a log
        return f"ActivateRequest(code=<hidden>, public_key={self.public_key!r})"


def _object(value: object, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("body: expected a JSON object")
    extra = sorted(str(k)[:40] for k in value if k not in keys)
    if extra:
        raise BadRequest(f"{extra[0]}: unknown field")
    missing = sorted(k for k in keys if k not in value)
    if missing:
        raise BadRequest(f"{missing[0]}: required")
    return value


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_FIELD_CHARS:
        raise BadRequest(f"{field}: expected a string of at most {_MAX_FIELD_CHARS} characters")
    return value


def parse_activate_request(value: object) -> ActivateRequest:
    """BadRequest naming the field for anything but ``{"code": str, "public_key": str}`` with a
    16-character base32 code and a canonical 43-character base64url Ed25519 public key."""
    body = _object(value, _ACTIVATE_KEYS)
    code = normal_code(_text(body["code"], "code"))
    if code is None:
        raise BadRequest("code: expected the 16-character activation code (A-Z, 2-7)")
    key = _text(body["public_key"], "public_key")
    try:
        # The form only: any 32 bytes are taken (cryptography does not check the point). A key
        # that is no point would only make a pass whose codes never verify, which harms no one
        # but its own holder.
        public_key_from_text(key)
    except ValueError as exc:
        raise BadRequest(f"public_key: {exc}") from None
    return ActivateRequest(code, key)


def _new_pass_id(tx: db.Tx, org_id: str) -> str:
    """A random 5-byte pass id no row of the organisation has ever had (tombstones included, so
    an id is never reused: a door may still remember the old pass's codes)."""
    for _ in range(_PASS_ID_ATTEMPTS):
        pass_id = pass_id_text(secrets.token_bytes(PASS_ID_BYTES))
        if db.replica_row(tx, "pass", org_id, pass_id) is None:
            return pass_id
    raise db.DatabaseBusy("no free pass id found; try again")  # pragma: no cover - 1 in 10^80


def activate(tx: db.Tx, request: ActivateRequest, now: datetime) -> dict[str, Any]:
    """Spend an activation code on a new ACTIVE pass with the phone's public key. The pass's
    period is the organisation's ``pass_period_s`` now. ActivationInvalid (410) for an unknown,
    used or expired code or a member deleted since; TooManyPasses (409) when the member holds
    ``max_live_passes`` ACTIVE passes already (the code stays unspent: the transaction rolls
    back)."""
    stamp = utc_text(now)
    code_hash = activation_code_hash(request.code)
    claimed = db.claim_pass_activation(tx, code_hash, stamp)
    if claimed is None:
        raise ActivationInvalid(_INVALID_CODE)
    org_id, member_id = claimed
    version = db.bump_version(tx, org_id)
    member = db.replica_row(tx, "member", org_id, member_id)
    if member is None or member["deleted"]:
        raise ActivationInvalid(_INVALID_CODE)
    settings = _settings(tx, org_id)
    # Again, under the version lock: two codes of one member spent at once count each other.
    _check_limit(tx, org_id, member_id, settings)
    pass_id = _new_pass_id(tx, org_id)
    period = int(settings["pass_period_s"])
    data = {
        "member_id": member_id,
        "organization_id": org_id,
        "public_key": request.public_key,
        "period_s": period,
        "status": "ACTIVE",
    }
    row = admin.validated("pass", pass_id, data)
    extra = {"created_at": stamp, "revoked_at": None}
    admin.store_row(tx, org_id, row, gym_id=None, version=version, now=stamp, extra=extra)
    db.set_pass_activation_pass(tx, code_hash, pass_id)
    return {
        "pass_id": pass_id,
        "organization_id": org_id,
        "organization_name": settings["name"],
        "first_name": member["first_name"],
        "period_s": period,
        "skew_steps": DEFAULT_SKEW_STEPS,
        "server_time": stamp,
    }


def pass_status(
    tx: db.Tx, value: object, now: datetime, *, skew_steps: int = DEFAULT_SKEW_STEPS
) -> dict[str, Any]:
    """What a phone may learn about its own pass, given a body ``{"code": "FFP1:..."}`` holding a
    current code of it: ``{"pass_id", "status": "ACTIVE"|"REVOKED", "period_s",
    "server_time"}``. A pass deleted with its member answers REVOKED. BadRequest (400) for a
    body that is not one pass code; NotFound (404) when no pass has the code's id;
    BadPassSignature (403) when the signature verifies with no such pass's key (a pass id is
    unique only within an organisation: the signature, which covers the organisation id, picks
    the caller's); PassCodeExpired (403) when the code's step is more than ``skew_steps`` from
    the cloud's step (either side)."""
    body = _object(value, _STATUS_KEYS)
    text = _text(body["code"], "code")
    scheme, sep, rest = text.partition(":")
    if scheme != SCHEME or not sep:
        raise BadRequest(f"code: expected a pass code {SCHEME}:...")
    parsed = parse_pass_body(rest)
    if isinstance(parsed, str):
        raise BadRequest(f"code: {parsed}")
    rows = db.passes_by_id(tx, parsed.pass_id)
    if not rows:
        raise NotFound("no such pass")
    holder = next((r for r in rows if _signed_by(r, parsed)), None)
    if holder is None:
        raise BadPassSignature("the pass code's signature does not verify")
    period = int(holder["period_s"])
    server_time = utc_text(now)
    drift = parsed.step - step_at(now.timestamp(), period)
    if abs(drift) > skew_steps:
        raise PassCodeExpired(
            f"the code was made about {abs(drift) * period} s {'after' if drift > 0 else 'before'} "
            "the cloud's time: check the phone's clock",
            server_time=server_time,
            period_s=period,
        )
    revoked = holder["deleted"] or holder["status"] == "REVOKED"
    return {
        "pass_id": parsed.pass_id,
        "status": "REVOKED" if revoked else "ACTIVE",
        "period_s": period,
        "server_time": server_time,
    }


def _signed_by(row: dict[str, Any], code: PhonePass) -> bool:
    """True when ``code``'s signature verifies with this pass row's key and organisation."""
    try:
        key = public_key_from_text(row["public_key"])
    except ValueError:  # pragma: no cover - stored keys were validated
        return False
    message = signed_message(row["organization_id"], code.pass_id, code.step)
    return verify_signature(key, message, code.signature)
