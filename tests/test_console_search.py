"""The console's member search: by name, card code or phone, scoped to the organisation and to a
trainer's members, safe with hostile input, and an index range on both databases (the plans are
read here; the figures on 100,000 members come from ``kiosk bench --console``). Every test runs on
SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud import admin, db
from cloud.console import search
from cloud.console.search import normal_phone, search_members
from cloud.migrations import migrate
from pg import cloud_db_url_fixture, pg_server_fixture  # noqa: F401
from sync.protocol import make_row

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

PEOPLE = [
    # (first, last, code, phone)
    ("Ann", "Smith", "ANN-0001", "+447700900123"),
    ("Annabel", "Smithers", "ANN-0002", "07700900456"),
    ("Mary Ann", "Jones", "MJ-0003", None),
    ("Joanna", "Smith-Jones", "jsj-0004", "+4915112345678"),
    ("Bob", "Annan", "BOB-0005", "0201234"),
    ("Émile", "Zola", "EZ-0006", "+33123450123"),
    ("Per%cent", "Under_score", "PU-0007", None),
    ("Quote's", "O'Brien", "QO-0008", None),
]


class Org:
    def __init__(self, database: db.Database, name: str) -> None:
        made = admin.create_organization(database, name, "Main", "Europe/Berlin", NOW)
        self.id = made.organization_id
        self.database = database
        self.members: dict[str, str] = {}  # "First Last" -> id

    def add(self, first: str, last: str, code: str | None, phone: str | None) -> str:
        def make(tx: db.Tx) -> str:
            fields = {"first_name": first, "last_name": last, "code": code}
            member = admin.save_member(tx, self.id, None, fields, NOW)
            db.set_member_phones(tx, self.id, {member["id"]: normal_phone(phone or "")})
            return member["id"]

        member_id = self.database.transact(make)
        self.members[f"{first} {last}"] = member_id
        return member_id

    def search(self, query: object, **kw) -> list[dict]:
        return self.database.transact(
            lambda tx: search_members(tx, self.id, query, **kw), write=False
        )

    def names(self, query: object, **kw) -> list[str]:
        return [f"{r['first_name']} {r['last_name']}" for r in self.search(query, **kw)]


@pytest.fixture(name="database")
def database_fixture(cloud_db_url):
    database = db.Database(cloud_db_url)
    migrate(database)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture(name="org")
def org_fixture(database):
    org = Org(database, "Acme")
    for person in PEOPLE:
        org.add(*person)
    return org


# -- names -----------------------------------------------------------------------------------------


def test_a_name_prefix_finds_first_and_last_names_in_any_case_sorted_by_last_name(org):
    assert org.names("ann") == ["Bob Annan", "Ann Smith", "Annabel Smithers"]
    assert org.names("SMITH") == ["Ann Smith", "Joanna Smith-Jones", "Annabel Smithers"]
    assert org.names("sMiThErS") == ["Annabel Smithers"]
    assert all(r["match"] == "name" for r in org.search("smith"))


def test_several_words_narrow_the_search_in_either_order(org):
    assert org.names("ann smith") == ["Ann Smith", "Annabel Smithers"]
    assert org.names("smithe anna") == ["Annabel Smithers"]
    assert org.names("ann smith zzz") == []


def test_a_word_may_start_a_word_inside_a_name(org):
    # "Mary Ann" is found by its second word once another word drives the search; a hyphenated
    # last name by its second part.
    assert org.names("mary ann") == ["Mary Ann Jones"]
    assert org.names("joanna jones") == ["Joanna Smith-Jones"]


def test_letters_beyond_ascii_are_matched_as_typed_and_ascii_in_any_case(org):
    assert org.names("Émile") == ["Émile Zola"]
    assert org.names("ÉMILE") == ["Émile Zola"]  # É as stored, MILE folded
    assert org.names("zola") == ["Émile Zola"]


def test_deleted_members_are_not_found(org, database):
    gone = org.members["Bob Annan"]
    database.transact(lambda tx: admin.delete_member(tx, org.id, gone, NOW))
    assert org.names("annan") == []
    assert org.names("BOB-0005") == []


# -- card codes ------------------------------------------------------------------------------------


def test_a_card_code_is_found_exactly_in_any_case_never_by_prefix(org):
    found = org.search("ANN-0001")
    assert [(r["code"], r["match"]) for r in found] == [("ANN-0001", "code")]
    assert org.search("ann-0001")[0]["code"] == "ANN-0001"
    assert org.search("JSJ-0004")[0]["code"] == "jsj-0004"
    assert org.search("ANN-000") == []  # a prefix of two codes is no code
    # A scanner's padding and a stray line end are stripped.
    assert org.search("\tANN-0002\r\n")[0]["code"] == "ANN-0002"


def test_an_exact_case_code_comes_before_one_differing_in_case(org):
    other = org.add("Case", "Twin", "ann-0001", None)
    found = org.search("ann-0001")
    assert [r["id"] for r in found[:2]] == [other, org.members["Ann Smith"]]


# -- phones ----------------------------------------------------------------------------------------


def test_a_phone_is_found_by_its_last_digits_a_longer_ending_or_the_whole_number(org):
    assert org.names("0123") == ["Ann Smith", "Émile Zola"]
    assert org.names("900123") == ["Ann Smith"]
    assert org.names("+44 7700 900123") == ["Ann Smith"]
    assert org.names("(0)7700-900-456") == ["Annabel Smithers"]
    assert org.search("0201234")[0]["match"] == "phone"
    assert org.search("123") == []  # fewer than four digits: not a phone search
    assert org.names("99900123") == []  # longer than the stored ending


def test_normal_phone_keeps_digits_and_a_leading_plus():
    assert normal_phone(" +44 (0)20 7946-0018 ") == "+4402079460018"
    assert normal_phone("0049.151/123") == "0049151123"
    assert normal_phone("") is None
    for bad in ("call me", "12", "1" * 21, "12+34"):
        with pytest.raises(ValueError, match="phone number"):
            normal_phone(bad)


# -- scope -----------------------------------------------------------------------------------------


def test_another_organisations_members_are_never_found(org, database):
    other = Org(database, "Rival")
    other.add("Ann", "Rival", "ANN-9999", "+447700900123")
    assert "Ann Rival" not in org.names("ann")
    assert org.search("ANN-9999") == []
    assert org.names("900123") == ["Ann Smith"]
    assert other.names("ann") == ["Ann Rival"]


def test_a_trainer_finds_only_the_members_assigned_to_them(org, database):
    rival = Org(database, "Rival")
    rival.add("Ann", "Rival", "ANN-9999", None)

    def staff(tx: db.Tx, org_id: str, staff_id: str) -> None:
        db.insert_staff(tx, staff_id, org_id, f"{staff_id}@example.org", "T", "trainer", "x", "t")

    def setup(tx: db.Tx) -> None:
        staff(tx, org.id, "stf_trainer")
        staff(tx, rival.id, "stf_rival")
        db.assign_trainer_member(tx, "stf_trainer", org.members["Annabel Smithers"])
        # A rival's trainer assigned one of our members (a forged row) still finds nothing here.
        db.assign_trainer_member(tx, "stf_rival", org.members["Ann Smith"])

    database.transact(setup)
    assert org.names("ann", trainer_id="stf_trainer") == ["Annabel Smithers"]
    assert org.names("ANN-0002", trainer_id="stf_trainer") == ["Annabel Smithers"]
    assert org.names("ANN-0001", trainer_id="stf_trainer") == []
    assert org.names("7700900456", trainer_id="stf_trainer") == ["Annabel Smithers"]
    assert org.names("900123", trainer_id="stf_trainer") == []
    assert org.names("ann", trainer_id="stf_rival") == []
    assert org.names("ann", trainer_id="stf_nobody") == []


# -- hostile and bounded input ---------------------------------------------------------------------


def test_like_wildcards_quotes_and_backslashes_are_plain_characters(org):
    assert org.names("%") == []
    assert org.names("_") == []
    assert org.names("a%") == []
    assert org.names("per%") == ["Per%cent Under_score"]
    assert org.names("under_") == ["Per%cent Under_score"]
    assert org.names("under%") == []
    assert org.names("o'b") == ["Quote's O'Brien"]
    assert org.names("x' OR '1'='1") == []
    assert org.names("\\") == [] and org.names("a\\") == []


@pytest.mark.parametrize(
    "query",
    ["", "   ", "\x00", "ann\x00smith", "\u202eann", "\ud800", "ann" * 10_000, "\n\t\r", None, 42],
)
def test_any_query_is_answered_without_error(org, query):
    found = org.search(query)
    assert isinstance(found, list) and len(found) <= search.DEFAULT_LIMIT


def test_control_characters_separate_words_and_long_queries_are_cut(org):
    assert org.names("ann\x00smith") == ["Ann Smith", "Annabel Smithers"]
    assert org.names("\u202eann") == ["Bob Annan", "Ann Smith", "Annabel Smithers"]
    assert search.clean_query("x" * 10_000) == "x" * search.MAX_QUERY_CHARS
    assert search.name_terms("a b c d e f", fold_all=False) == ["a", "b", "c", "d"]


def test_the_limit_is_kept_and_clamped(org):
    for n in range(30):
        org.add(f"Anna{n:02d}", "Many", None, None)
    assert len(org.search("anna", limit=5)) == 5
    assert len(org.search("anna")) == search.DEFAULT_LIMIT
    assert len(org.search("anna", limit=10_000)) == 32  # Annan, Annabel and the 30
    assert len(org.search("anna", limit=0)) == 1


# -- the plans: an index range for every kind of search --------------------------------------------

SEARCHES = [
    ("code", ["ann-0001"], "members_by_card_code"),
    ("phone", ["900123"], "members_by_phone_tail"),
    ("name", ["ann"], "members_by_first_name"),
    ("name", ["ann"], "members_by_last_name"),
    ("name", ["smith", "ann"], "members_by_last_name"),
]
FILLER = 3000


def add_filler(database: db.Database, org_id: str, count: int) -> None:
    """``count`` more members in one statement (names, codes and phones unlike the test's), and
    fresh planner statistics: the plans are those of a real table, not of a few rows."""
    table = db.REPLICA_TABLES["member"]

    def write(tx: db.Tx) -> None:
        version = db.bump_version(tx, org_id)
        rows = []
        for n in range(count):
            data = {"organization_id": org_id, "first_name": f"Filler{n}",
                    "last_name": f"Person{n % 97}", "status": "ACTIVE", "is_staff": False,
                    "code_hash": None}  # fmt: skip
            row = make_row("member", f"mbr_filler{n:05d}", data)
            values = {c: (row.data or {}).get(c) for c in table.columns}
            values |= {extra: None for extra in table.extra} | {"card_code": f"FILL-{n:05d}"}
            rows.append(db.RowWrite(None, row.id, values, row.row_hash()))
        db.upsert_replica_rows(tx, "member", org_id, rows, version=version, now="t")
        db.set_member_phones(
            tx, org_id, {f"mbr_filler{n:05d}": f"+49{n:09d}" for n in range(count)}
        )
        tx.run("ANALYZE")

    database.transact(write)


@pytest.fixture(name="planned")
def planned_fixture(org, database):
    def setup(tx: db.Tx) -> None:
        db.insert_staff(tx, "stf_trainer", org.id, "t@example.org", "T", "trainer", "x", "t")
        db.assign_trainer_member(tx, "stf_trainer", org.members["Ann Smith"])

    database.transact(setup)
    add_filler(database, org.id, FILLER)
    return org


@pytest.mark.parametrize(("by", "terms", "index"), SEARCHES)
@pytest.mark.parametrize("trainer", [None, "stf_trainer"])
def test_every_search_is_an_index_range(planned, database, by, terms, index, trainer):
    lines = database.transact(
        lambda tx: db.member_search_plan(tx, planned.id, by, terms, limit=20, trainer_id=trainer),
        write=False,
    )
    text = "\n".join(lines)
    assert index in text, text
    if database.dialect == db.SQLITE:
        assert not any(line.startswith("SCAN members") for line in lines), text
    else:
        assert "Seq Scan on members" not in text, text
