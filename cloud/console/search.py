"""Member search at the front desk: one box for a name, a card code or a phone number.

``search_members(tx, org_id, query)`` reads the query three ways at once and returns the live
members of the organisation it finds, at most ``limit`` (``MAX_LIMIT`` at most):

- **card code**: a query in the printed code's form (4 to 64 characters from ``A-Z a-z 0-9 . _
  -``, the form the admin API accepts; a scanner's padding around it is stripped) finds the member
  holding that code, in any case (an exact-case match first);
- **phone**: a query of digits (with the usual ``+ ( ) - . /`` and spaces, ``MIN_PHONE_DIGITS`` to
  ``MAX_PHONE_DIGITS`` digits) finds the members whose number ends with those digits: the last
  four, a longer ending or the whole number (stored numbers hold digits and a leading ``+`` at
  most: ``normal_phone`` is the form to store);
- **name**: a query with a letter is split into words (``MAX_WORDS`` at most); each word must
  start the first name, the last name or a word within them (after a space or a hyphen), case
  folded as the database folds it (ASCII on SQLite and a C-locale PostgreSQL, every letter on a
  UTF-8 PostgreSQL), so "ann smi" finds Ann Smith and Annabel Smithers.

Code matches come first, then phone matches, then names by last name, first name and id; a
member found twice is listed once, with its first match. Every search is an index range of the
console migration (``cloud.db``, "console: search"), so it costs the same on 100 or 100,000
members; a name search reads at most ``limit`` rows per name column, so with more matches than
``limit`` the ones listed are among the first in index order: refine the query to see the rest.

``trainer_id`` keeps the search to the members assigned to that trainer (``trainer_members``).

Hostile input is harmless and bounded: the query is cut to ``MAX_QUERY_CHARS``, control and
format characters become spaces, ``%``, ``_`` and ``\\`` are plain characters (escaped in the one
LIKE filter, never in the index ranges), and every value is a bound parameter. The function never
raises for any query text; database failures are ``cloud.db.DatabaseError``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from cloud import db

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_CHARS = 100
MAX_WORDS = 4
MAX_WORD_CHARS = 64
MIN_PHONE_DIGITS = 4  # the phone index holds each number's last four digits
MAX_PHONE_DIGITS = 20  # E.164 numbers have at most 15; room for an access code

_CODE = re.compile(r"[A-Za-z0-9._-]{4,64}")
_PHONE_TEXT = re.compile(r"\+?[0-9 ().\-/]+")
_NOT_DIGIT = re.compile(r"[^0-9]")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def clean_query(query: object) -> str:
    """The query as searched: text only (anything else is empty), at most ``MAX_QUERY_CHARS``
    characters, NFC, control and format characters (categories Cc, Cf, Cs, Co, Cn) turned into
    spaces, runs of spaces collapsed, stripped."""
    if not isinstance(query, str):
        return ""
    text = unicodedata.normalize("NFC", query[: MAX_QUERY_CHARS * 2])[:MAX_QUERY_CHARS]
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(text.split())


def normal_phone(text: str) -> str | None:
    """A phone number in the form ``members.phone`` holds and the search reads: the digits, after
    a ``+`` when the number began with one (``"+44 (0)20 7946-0018"`` -> ``"+4402079460018"``).
    Spaces and ``( ) - . /`` are dropped. None for an empty text; ValueError (plain words, the
    number not quoted) for any other character or a digit count outside ``MIN_PHONE_DIGITS`` to
    ``MAX_PHONE_DIGITS``."""
    stripped = text.strip()
    if not stripped:
        return None
    if _PHONE_TEXT.fullmatch(stripped) is None:
        raise ValueError("a phone number holds digits, spaces and + ( ) - . / only")
    digits = _NOT_DIGIT.sub("", stripped)
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS:
        raise ValueError(
            f"a phone number has {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits, not {len(digits)}"
        )
    return ("+" if stripped.startswith("+") else "") + digits


def code_term(query: str) -> str | None:
    """The card code a cleaned query names, or None: the query itself when it has the printed
    code's form."""
    return query if _CODE.fullmatch(query) else None


def phone_term(query: str) -> str | None:
    """The digits a cleaned query names as a phone number (or its ending), or None."""
    if _PHONE_TEXT.fullmatch(query) is None:
        return None
    digits = _NOT_DIGIT.sub("", query)
    return digits if MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS else None


def name_terms(query: str, *, fold_all: bool) -> list[str]:
    """The words of a cleaned query for a name search (none unless it holds a letter), lower
    case as the database folds (``fold_all``: every letter, else ASCII only), at most
    ``MAX_WORDS`` of at most ``MAX_WORD_CHARS`` characters."""
    if not any(ch.isalpha() for ch in query):
        return []
    words = [w[:MAX_WORD_CHARS] for w in query.split()[:MAX_WORDS]]
    return [w.lower() if fold_all else w.translate(_ASCII_LOWER) for w in words]


def _view(row: dict[str, Any], match: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "status": row["status"],
        "is_staff": bool(row["is_staff"]),
        "code": row["card_code"],
        "phone": row["phone"],
        "match": match,
    }


def search_members(
    tx: db.Tx,
    org_id: str,
    query: object,
    *,
    limit: int = DEFAULT_LIMIT,
    trainer_id: str | None = None,
) -> list[dict[str, Any]]:
    """Members of ``org_id`` (only ``trainer_id``'s, when given) the query finds, best first:
    [{id, first_name, last_name, status, is_staff, code, phone, match}], ``match`` being
    ``code``, ``phone`` or ``name``. ``limit`` is clamped to 1..``MAX_LIMIT``. An empty or
    unusable query finds nobody. Runs up to three index-range queries in ``tx``."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    text = clean_query(query)
    if not text:
        return []
    found: dict[str, dict[str, Any]] = {}

    def add(rows: list[dict[str, Any]], match: str) -> None:
        for row in rows:
            found.setdefault(row["id"], _view(row, match))

    code = code_term(text)
    if code is not None:
        rows = db.member_search(
            tx, org_id, "code", [code.lower()], limit=limit, trainer_id=trainer_id
        )
        add(sorted(rows, key=lambda r: (r["card_code"] != code, r["card_code"], r["id"])), "code")
    digits = phone_term(text)
    if digits is not None and len(found) < limit:
        rows = db.member_search(tx, org_id, "phone", [digits], limit=limit, trainer_id=trainer_id)
        add(rows, "phone")
    words = name_terms(text, fold_all=db.lower_folds_non_ascii(tx))
    if words and len(found) < limit:
        rows = db.member_search(tx, org_id, "name", words, limit=limit, trainer_id=trainer_id)
        add(
            sorted(rows, key=lambda r: (r["last_name"].lower(), r["first_name"].lower(), r["id"])),
            "name",
        )
    return list(found.values())[:limit]
