"""Staff accounts as owners manage them: invites, taking one up, roles, disabling, trainers' members.
Used by the console's pages and by ``kiosk cloud invite``.

Every function works inside the caller's transaction and the given organisation: another
organisation's ids are simply not found (``NotFound``). Each change writes its audit row in the
same transaction. Failures are ``cloud.errors`` exceptions with plain words: ``Invalid`` (a field),
``NotFound``, ``Clash`` (an account that already exists, the last owner), ``InviteInvalid``.

An invite is a random 256-bit token shown once, as the link ``/console/invite#<token>`` (the part
after ``#`` never reaches a server log or a Referer), stored as its SHA-256, single-use and valid
for INVITE_TTL. The organisation always keeps one enabled owner: the last one can be neither
demoted nor disabled, and nobody disables their own account.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cloud import db, tokens
from cloud.console import audit
from cloud.console.auth import (
    ROLE_WORDS,
    ROLES,
    StaffUser,
    clean_name,
    new_token,
    normal_email,
    token_hash,
)
from cloud.errors import Clash, Invalid, NotFound, ServiceError
from sync.protocol import utc_text

INVITE_TTL_HOURS = 72
INVITE_TTL = timedelta(hours=INVITE_TTL_HOURS)
INVITE_PATH = "/console/invite"
MAX_ACCOUNTS_PER_EMAIL = 8  # sign-in checks at most this many organisations' accounts


class InviteInvalid(ServiceError):
    """One answer for an unknown, used or expired invite (410)."""

    status, code = 410, "invite_invalid"


@dataclass(frozen=True, slots=True)
class NewInvite:
    """What ``create_invite`` made; ``token`` is shown once and stored only hashed."""

    token: str
    organization_id: str
    email: str
    role: str
    expires_at: str

    @property
    def path(self) -> str:
        """The invite link without the site's address: ``/console/invite#<token>``."""
        return f"{INVITE_PATH}#{self.token}"


def check_role(role: object, field: str = "role") -> str:
    if role not in ROLES:
        raise Invalid([(field, f"expected one of {', '.join(ROLES)}")])
    assert isinstance(role, str)
    return role


def staff_user(row: dict[str, Any]) -> StaffUser:
    return StaffUser(
        id=row["id"],
        organization_id=row["organization_id"],
        email=row["email"],
        name=row["name"],
        role=row["role"],
    )


def create_invite(
    tx: db.Tx,
    org_id: str,
    email: str,
    role: str,
    by: StaffUser | None,
    now: datetime,
    address: str,
) -> NewInvite:
    """A single-use invite for ``email`` to join ``org_id`` as ``role``, made by ``by`` (None: the
    command line). Invalid for a bad email or role, NotFound for an unknown organisation, Clash
    when the email already has an enabled account there."""
    normal = normal_email(email)
    problems = []
    if normal is None:
        problems.append(("email", "expected an email address like name@example.com"))
    if role not in ROLES:
        problems.append(("role", f"expected one of {', '.join(ROLES)}"))
    if problems:
        raise Invalid(problems)
    assert normal is not None
    if db.organization(tx, org_id) is None:
        raise NotFound(f"no organisation {org_id}")
    existing = db.staff_by_email(tx, org_id, normal)
    if existing is not None and existing["disabled_at"] is None:
        raise Clash(f"{normal} already has an account here")
    token = new_token()
    expires = utc_text(now + INVITE_TTL)
    db.insert_staff_invite(
        tx,
        token_hash(token),
        org_id,
        normal,
        role,
        None if by is None else by.id,
        utc_text(now),
        expires,
    )
    audit.record(
        tx,
        by,
        "staff.invite",
        normal,
        f"invited as {ROLE_WORDS[role].lower()}, valid for {INVITE_TTL_HOURS} hours",
        address,
        at=now,
        organization_id=org_id,
    )
    return NewInvite(token, org_id, normal, role, expires)


def invite_token(text: str) -> str:
    """The token in what a person pasted: the token itself or the whole link."""
    text = text.strip()
    return text.rsplit("#", 1)[-1].strip() if "#" in text else text


def open_invite(tx: db.Tx, token: str, now: datetime) -> dict[str, Any]:
    """The unused, unexpired invite ``token`` names: {organization_id, organization_name, email,
    role, expires_at}. InviteInvalid otherwise."""
    if not token or len(token) > 128:
        raise InviteInvalid("this invitation is not valid")
    row = db.staff_invite(tx, token_hash(token), utc_text(now))
    if row is None:
        raise InviteInvalid("this invitation is not valid")
    return row


def accept_invite(
    tx: db.Tx, token: str, name: str, password_hash: str, now: datetime, address: str
) -> StaffUser:
    """Take up an invite: the account is made (or a disabled one with the same email enabled
    again) with ``name`` and the password's hash, and the invite is spent. InviteInvalid for an
    unknown, used or expired invite (or one spent by a concurrent request); Invalid for a bad
    name; Clash when the email got an enabled account meanwhile (the invite stays unspent)."""
    clean = clean_name(name)
    if clean is None:
        raise Invalid([("name", "expected your name, 1 to 100 characters")])
    claimed = db.claim_staff_invite(tx, token_hash(token), utc_text(now))
    if claimed is None:
        raise InviteInvalid("this invitation is not valid")
    org_id, email, role = claimed["organization_id"], claimed["email"], claimed["role"]
    existing = db.staff_by_email(tx, org_id, email)
    if existing is not None and existing["disabled_at"] is None:
        raise Clash(f"{email} already has an account here: sign in instead")
    if existing is not None:
        db.reactivate_staff(tx, org_id, existing["id"], clean, role, password_hash)
        staff_id = existing["id"]
        what = "enabled again through an invite"
    else:
        staff_id = tokens.new_id("stf")
        db.insert_staff(tx, staff_id, org_id, email, clean, role, password_hash, utc_text(now))
        what = "joined through an invite"
    user = StaffUser(staff_id, org_id, email, clean, role)
    audit.record(
        tx, user, "staff.join", staff_id, f"{what} as {ROLE_WORDS[role].lower()}", address, at=now
    )
    return user


def add_staff(
    tx: db.Tx,
    org_id: str,
    email: str,
    name: str,
    role: str,
    password_hash: str,
    now: datetime,
    address: str,
) -> StaffUser:
    """An account made directly, without an invite (the demo's one-run owner, the tests' rigs):
    audited as made from ``address`` by nobody in particular. Invalid, NotFound or Clash like
    ``create_invite``."""
    normal = normal_email(email)
    clean = clean_name(name)
    problems = []
    if normal is None:
        problems.append(("email", "expected an email address like name@example.com"))
    if clean is None:
        problems.append(("name", "expected a name, 1 to 100 characters"))
    if role not in ROLES:
        problems.append(("role", f"expected one of {', '.join(ROLES)}"))
    if problems:
        raise Invalid(problems)
    assert normal is not None and clean is not None
    if db.organization(tx, org_id) is None:
        raise NotFound(f"no organisation {org_id}")
    if db.staff_by_email(tx, org_id, normal) is not None:
        raise Clash(f"{normal} already has an account here")
    staff_id = tokens.new_id("stf")
    db.insert_staff(tx, staff_id, org_id, normal, clean, role, password_hash, utc_text(now))
    audit.record(
        tx,
        None,
        "staff.add",
        staff_id,
        f"{normal} added as {ROLE_WORDS[role].lower()} without an invite",
        address,
        at=now,
        organization_id=org_id,
    )
    return StaffUser(staff_id, org_id, normal, clean, role)


def get_staff(tx: db.Tx, org_id: str, staff_id: str) -> dict[str, Any]:
    """One account of the organisation (NotFound otherwise), without its password hash."""
    row = db.staff_member(tx, org_id, staff_id)
    if row is None:
        raise NotFound("no such staff member")
    return row


def _keeps_an_owner(tx: db.Tx, org_id: str, staff_id: str) -> bool:
    """True unless ``staff_id`` is the organisation's only enabled owner."""
    return db.enabled_owner_ids(tx, org_id) != [staff_id]


def change_role(
    tx: db.Tx, me: StaffUser, staff_id: str, role: str, now: datetime, address: str
) -> dict[str, Any]:
    """Give an account of ``me``'s organisation another role; the account's row after. NotFound,
    Invalid (role), Clash (the last enabled owner)."""
    row = get_staff(tx, me.organization_id, staff_id)
    role = check_role(role)
    if row["role"] == role:
        return row
    if row["role"] == "owner" and not _keeps_an_owner(tx, me.organization_id, staff_id):
        raise Clash("the organisation must keep an enabled owner: make another owner first")
    db.set_staff_role(tx, me.organization_id, staff_id, role)
    audit.record(
        tx,
        me,
        "staff.role",
        staff_id,
        f"{row['email']}: {ROLE_WORDS[row['role']].lower()} → {ROLE_WORDS[role].lower()}",
        address,
        at=now,
    )
    return get_staff(tx, me.organization_id, staff_id)


def disable(tx: db.Tx, me: StaffUser, staff_id: str, now: datetime, address: str) -> dict[str, Any]:
    """Disable an account of ``me``'s organisation and end its sessions at once. NotFound; Clash
    for one's own account or the last enabled owner. Disabling a disabled account changes
    nothing."""
    row = get_staff(tx, me.organization_id, staff_id)
    if row["disabled_at"] is not None:
        return row
    if staff_id == me.id:
        raise Clash("you cannot disable your own account")
    if row["role"] == "owner" and not _keeps_an_owner(tx, me.organization_id, staff_id):
        raise Clash("the organisation must keep an enabled owner")
    db.disable_staff(tx, me.organization_id, staff_id, utc_text(now))
    audit.record(tx, me, "staff.disable", staff_id, f"{row['email']} disabled", address, at=now)
    return get_staff(tx, me.organization_id, staff_id)


def trainer_members(tx: db.Tx, org_id: str, staff_id: str) -> list[dict[str, Any]]:
    return db.trainer_member_rows(tx, org_id, staff_id)


def assign_member(
    tx: db.Tx, me: StaffUser, staff_id: str, member_id: str, now: datetime, address: str
) -> bool:
    """Assign a live member of the organisation to one of its trainers; True when new. NotFound
    for an unknown account; Invalid when it is not a trainer or the member is unknown."""
    row = get_staff(tx, me.organization_id, staff_id)
    if row["role"] != "trainer":
        raise Invalid([("staff", "only trainers are assigned members")])
    member_id = member_id.strip()
    member = db.replica_row(tx, "member", me.organization_id, member_id) if member_id else None
    if member is None or member["deleted"]:
        raise Invalid([("member_id", "no member has this id")])
    added = db.assign_trainer_member(tx, staff_id, member_id)
    if added:
        name = f"{member['first_name']} {member['last_name']}"
        audit.record(
            tx,
            me,
            "trainer.assign",
            member_id,
            f"{name} assigned to trainer {row['email']}",
            address,
            at=now,
        )
    return added


def unassign_member(
    tx: db.Tx, me: StaffUser, staff_id: str, member_id: str, now: datetime, address: str
) -> None:
    """Take a member from a trainer. NotFound when the account or the assignment is not there."""
    row = get_staff(tx, me.organization_id, staff_id)
    if not db.unassign_trainer_member(tx, me.organization_id, staff_id, member_id):
        raise NotFound("no such assignment")
    audit.record(
        tx,
        me,
        "trainer.unassign",
        member_id,
        f"taken from trainer {row['email']}",
        address,
        at=now,
    )


def may_see_member(tx: db.Tx, staff: StaffUser, member_id: str) -> bool:
    """False when ``staff`` is a trainer not assigned this member (the members pages then answer
    404, as for a member of another organisation); True for staff and owners, who see every
    member of their organisation (whether the member exists is the caller's query)."""
    if staff.role != "trainer":
        return True
    return db.trainer_has_member(tx, staff.organization_id, staff.id, member_id)
