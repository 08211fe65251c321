"""The staff console keeps strangers out: invites (single use, expiry), password rules and hashing,
sign-in and its throttling, sessions (idle and absolute limits, sign-out, cookie flags), CSRF and
origin checks, security headers, roles, the staff and audit pages and the audit rows every change
writes. On SQLite and PostgreSQL, against the real app; the clock is injected, nothing sleeps."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from cloud import cli
from cloud.console import auth
from cloud.console.pages import CSP, NAV
from console_rig import (
    HTTPS_ORIGIN,
    PASSWORD,
    ConsoleRig,
    cloud_db_url_fixture,  # noqa: F401
    console_fixture,  # noqa: F401
    form_csrf,
    pg_server_fixture,  # noqa: F401
)
from pg import FakeClock

NEW_PASSWORD = "seven quiet otters rowing"  # noqa: S105
HOUR = 3600.0


def error_of(page) -> str:
    found = re.search(r'<p class="error" role="alert">([^<]*)</p>', page.text)
    return found.group(1) if found else ""


def invite(desk, email: str, role: str = "staff") -> str:
    """An owner's invite through the staff page; the token from the link shown once."""
    page = desk.post("/console/staff/invite", {"email": email, "role": role})
    assert page.status_code == 200, page.text
    link = re.search(r'value="(http[^"]+/console/invite#[^"]+)"', page.text)
    assert link is not None
    return link.group(1).rsplit("#", 1)[1]


def accept(
    console: ConsoleRig,
    token: str,
    name: str = "Nora New",
    password: str = NEW_PASSWORD,
    password2: str | None = None,
    client=None,
):
    client = client or console.browser()
    page = client.get("/console/invite")
    assert page.status_code == 200
    return client, client.post(
        "/console/invite",
        data={
            "csrf": form_csrf(page.text),
            "token": token,
            "name": name,
            "password": password,
            "password2": password if password2 is None else password2,
        },
        follow_redirects=False,
    )


def actions(console: ConsoleRig, org=None) -> list[str]:
    return [row["action"] for row in console.audit(org or console.a)]


# -- passwords -------------------------------------------------------------------------------------


def test_passwords_are_scrypt_hashed_with_a_salt_and_checked():
    encoded = auth.hash_password(PASSWORD)
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(auth._unb64(salt)) == 16 and len(auth._unb64(key)) == 32
    assert auth.hash_password(PASSWORD) != encoded  # a new salt each time
    assert auth.verify_password(PASSWORD, encoded)
    assert not auth.verify_password(PASSWORD + " ", encoded)
    for broken in ("", "scrypt$1$2", "bcrypt$16384$8$1$aa$bb", encoded.replace("16384", "x")):
        assert not auth.verify_password(PASSWORD, broken)
    # Parameters beyond the limits are refused rather than run (a stored value could ask for GiBs).
    assert not auth.verify_password(PASSWORD, encoded.replace("$16384$", f"${2**24}$"))
    assert auth.check_passwords(PASSWORD, ["junk", encoded]) == 1
    assert auth.check_passwords("wrong one entirely", [encoded]) is None
    # The cost is read from the stored form: a cheaper one (the test rig's) still verifies.
    cheap = auth.hash_password(PASSWORD, n=2**10)
    assert cheap.split("$")[1] == "1024" and auth.verify_password(PASSWORD, cheap)
    assert not auth.verify_password("wrong one entirely", cheap)
    assert auth.check_passwords("anything at all", []) is None


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "at least 12"),
        ("x" * 257, "at most 256"),
        ("abababababab", "different characters"),
        ("nora.new@acme.test", "too close"),
        ("Nora.New2024!", "too close"),
        ("password1234", "too close"),
        ("Password!Password!", "too close"),
        ("qwerty123456", "too close"),
        ("acme-zanzibar-1", "too close"),
        ("Nora Newcombe 1", "too close"),
    ],
)
def test_password_rules_refuse_weak_passwords(password, problem):
    found = auth.password_problem(
        password, email="nora.new@acme.test", name="Nora Newcombe", org_name="Acme Zanzibar"
    )
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "password",
    [NEW_PASSWORD, "correct horse battery staple", "Tr0ub4dor&3-xyz", "nora + 8 other words"],
)
def test_password_rules_accept_good_passwords(password):
    assert (
        auth.password_problem(
            password, email="nora.new@acme.test", name="Nora Newcombe", org_name="Acme Zanzibar"
        )
        is None
    )


def test_emails_and_names_are_normalised_or_refused():
    assert auth.normal_email("  Nora@Acme.TEST ") == "nora@acme.test"
    for bad in ("", "nora", "nora@acme", "a@b@c.d", "no ra@acme.test", "n<r>@acme.test", "@x.y"):
        assert auth.normal_email(bad) is None, bad
    assert auth.clean_name("  Nora   New ") == "Nora New"
    assert auth.clean_name("   ") is None and auth.clean_name("x" * 101) is None
    assert auth.clean_name("bad\x07name") is None


# -- invites ---------------------------------------------------------------------------------------


def test_the_first_owner_comes_from_the_cli_invite(cloud_db_url, capsys):
    # The command line stamps the invite with the real time, so the app's clock starts there too.
    rig = ConsoleRig(cloud_db_url, FakeClock(datetime.now(UTC)))
    try:
        org = rig.new_org("Fresh Gym", "Main")
        code = cli.main(
            [
                "invite",
                "--db",
                cloud_db_url,
                "--org",
                org.id,
                "--email",
                "Boss@Fresh.test",
                "--role",
                "owner",
                "--base-url",
                "https://cloud.example/",
                "--json",
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        made = json.loads(out)
        assert made["email"] == "boss@fresh.test" and made["role"] == "owner"
        assert made["link"] == "https://cloud.example" + made["invite_path"]
        token = made["invite_path"].split("#", 1)[1]
        assert made["invite_path"] == f"/console/invite#{token}"

        client, answer = accept(rig, token, name="Bo Boss")
        assert answer.status_code == 303 and answer.headers["location"] == "/console/"
        assert client.get("/console/staff").status_code == 200  # signed in, as an owner
        rows = rig.audit(org)
        assert [r["action"] for r in rows][-3:] == ["staff.invite", "staff.join", "session.login"]
        cli_row = rows[-3]
        assert cli_row["staff_id"] is None and cli_row["address"] == "command line"
        assert cli_row["target"] == "boss@fresh.test"

        # Without --json: the link in words; bad input: exit 2 with the reason.
        assert (
            cli.main(
                [
                    "invite",
                    "--db",
                    cloud_db_url,
                    "--org",
                    org.id,
                    "--email",
                    "desk@fresh.test",
                    "--role",
                    "staff",
                ]
            )
            == 0
        )
        out, _ = capsys.readouterr()
        assert "link: <cloud address>/console/invite#" in out and "only this once" in out
        assert (
            cli.main(
                [
                    "invite",
                    "--db",
                    cloud_db_url,
                    "--org",
                    org.id,
                    "--email",
                    "boss@fresh.test",
                    "--role",
                    "staff",
                ]
            )
            == 2
        )
        assert "already has an account" in capsys.readouterr().err
        assert (
            cli.main(
                [
                    "invite",
                    "--db",
                    cloud_db_url,
                    "--org",
                    org.id,
                    "--email",
                    "not-an-email",
                    "--role",
                    "staff",
                ]
            )
            == 2
        )
        assert "email" in capsys.readouterr().err
        assert (
            cli.main(
                [
                    "invite",
                    "--db",
                    cloud_db_url,
                    "--org",
                    "org_nope",
                    "--email",
                    "a@b.test",
                    "--role",
                    "staff",
                ]
            )
            == 2
        )
        with pytest.raises(SystemExit):
            cli.main(
                [
                    "invite",
                    "--db",
                    cloud_db_url,
                    "--org",
                    org.id,
                    "--email",
                    "a@b.test",
                    "--role",
                    "king",
                ]
            )
        capsys.readouterr()
    finally:
        rig.close()


def test_an_invite_works_once(console):
    owner = console.sign_in("owner")
    token = invite(owner, "nora@acme.test", "trainer")
    client, answer = accept(console, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/members"
    # The new trainer is signed in at once, with the trainer's rights.
    assert client.get("/console/staff", follow_redirects=False).status_code == 403
    before = console.snapshot()
    _, again = accept(console, token, name="Someone Else", password="another fine passphrase")  # noqa: S106
    assert again.status_code == 410
    assert "not valid" in error_of(again)
    assert console.snapshot() == before
    # Guessing is an invalid invite too, and changes nothing.
    _, guess = accept(console, "A" * 43)
    assert guess.status_code == 410
    assert console.snapshot() == before
    # Signing in with the new password works.
    assert console.login(console.browser(), "nora@acme.test", NEW_PASSWORD).status_code == 303


def test_an_invite_expires_after_72_hours(console):
    owner = console.sign_in("owner")
    early, late = invite(owner, "early@acme.test"), invite(owner, "late@acme.test")
    console.clock.advance(72 * HOUR - 1)
    assert accept(console, early)[1].status_code == 303
    console.clock.advance(1)
    _, answer = accept(console, late)
    assert answer.status_code == 410
    assert "expired" in error_of(answer)


def test_a_refused_password_leaves_the_invite_unspent(console):
    token = invite(console.sign_in("owner"), "nora.new@acme.test")
    for password, password2, words in [
        ("short", None, "at least 12"),
        ("nora.new-2024!", None, "too close"),
        (NEW_PASSWORD, NEW_PASSWORD + "x", "not the same"),
    ]:
        _, answer = accept(console, token, password=password, password2=password2)
        assert answer.status_code == 400 and words in error_of(answer), error_of(answer)
    _, no_name = accept(console, token, name="   ")
    assert no_name.status_code == 400 and "name" in error_of(no_name)
    # The invite's details are shown with the error; then a good password takes it.
    assert "nora.new@acme.test" in no_name.text
    assert accept(console, token)[1].status_code == 303


def test_inviting_checks_the_email_and_an_existing_account(console):
    owner = console.sign_in("owner")
    before = console.snapshot()
    bad = owner.post("/console/staff/invite", {"email": "nope", "role": "staff"})
    assert bad.status_code == 422 and "email address" in error_of(bad)
    taken = owner.post("/console/staff/invite", {"email": "STAFF@acme.test", "role": "staff"})
    assert taken.status_code == 409 and "already has an account" in error_of(taken)
    role = owner.post("/console/staff/invite", {"email": "x@acme.test", "role": "root"})
    assert role.status_code == 422
    assert console.snapshot() == before


def test_a_disabled_account_is_enabled_again_by_a_new_invite(console):
    owner = console.sign_in("owner")
    trainer = console.a.people["trainer"]
    assert owner.post(f"/console/staff/{trainer.id}/disable").status_code == 303
    token = invite(owner, trainer.email, "staff")
    _, answer = accept(console, token, name="Tess Again")
    assert answer.status_code == 303
    page = owner.get(f"/console/staff/{trainer.id}")
    assert "Tess Again" in page.text and f"{trainer.email} · Front desk" in page.text
    assert "<strong>disabled</strong>" not in page.text
    assert console.login(console.browser(), trainer.email, PASSWORD).status_code == 401
    assert console.login(console.browser(), trainer.email, NEW_PASSWORD).status_code == 303


# -- sign-in ---------------------------------------------------------------------------------------


def test_sign_in_success_and_a_uniform_failure(console):
    staff = console.a.people["staff"]
    ok = console.login(console.browser(), staff.email.upper(), next_path="/console/audit")
    assert ok.status_code == 303 and ok.headers["location"] == "/console/audit"
    # Wrong password, unknown email and disabled account look the same.
    owner = console.sign_in("owner")
    trainer = console.a.people["trainer"]
    assert owner.post(f"/console/staff/{trainer.id}/disable").status_code == 303
    answers = [
        console.login(console.browser(), staff.email, "not the password at all"),
        console.login(console.browser(), "nobody@acme.test"),
        console.login(console.browser(), trainer.email),
        console.login(console.browser(), "not an email"),
    ]
    for answer in answers:
        assert answer.status_code == 401
        assert error_of(answer) == "Wrong email or password."
        assert "console_session" not in answer.headers.get("set-cookie", "")
    # A failure is audited for an existing account only (nothing to hang it on otherwise).
    failed = [r for r in console.audit(console.a) if r["action"] == "login.failed"]
    assert [r["target"] for r in failed] == [staff.id]
    assert failed[0]["address"] == "testclient" and failed[0]["staff_id"] is None


def test_sign_in_goes_only_to_console_pages(console):
    email = console.a.people["owner"].email
    for bad in [
        "https://evil.example/",
        "//evil.example/x",
        "/console/\\evil",
        "/admin/v1/x",
        "/console/login",
        "/console//x",
    ]:
        answer = console.login(console.browser(), email, next_path=bad)
        assert answer.headers["location"] == "/console/", bad
    anonymous = console.browser().get("/console/staff?x=1", follow_redirects=False)
    assert anonymous.headers["location"] == "/console/login?next=%2Fconsole%2Fstaff%3Fx%3D1"


def test_the_same_email_in_two_organisations_signs_in_where_the_password_fits(console):
    console.add_person(console.a, "trainer", "shared@acme.test", "Sam Shared")
    other = auth.hash_password(NEW_PASSWORD)
    console.add_person(console.b, "staff", "shared@acme.test", "Sam Shared", other)
    to_a = console.login(console.browser(), "shared@acme.test", PASSWORD)
    assert to_a.headers["location"] == "/console/members"  # A's trainer
    to_b = console.login(console.browser(), "shared@acme.test", NEW_PASSWORD)
    assert to_b.headers["location"] == "/console/"  # B's front desk
    assert actions(console, console.b)[-1] == "session.login"


def test_sign_in_is_throttled_per_address(console):
    email = console.a.people["owner"].email
    client = console.browser()
    for n in range(auth.ADDRESS_BUDGET):
        answer = console.login(client, f"nobody{n}@acme.test", "wrong password here")
        assert answer.status_code == 401, n
    refused = console.login(client, email)  # the right password, but refused unchecked
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == int(auth.ADDRESS_REFILL_S)
    assert "Too many failed sign-ins" in error_of(refused)
    # Another address is not affected.
    assert console.login(console.browser(address="10.9.9.9"), email).status_code == 303
    console.clock.advance(auth.ADDRESS_REFILL_S)
    assert console.login(client, email).status_code == 303


def test_sign_in_is_throttled_per_account(console):
    email = console.a.people["staff"].email
    for n in range(auth.ACCOUNT_BUDGET):
        answer = console.login(console.browser(address=f"10.0.0.{n}"), email, "wrong password")
        assert answer.status_code == 401
    refused = console.login(console.browser(address="10.0.1.1"), email)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == int(auth.ACCOUNT_REFILL_S)
    # Another account from the same address still signs in.
    owner = console.a.people["owner"].email
    assert console.login(console.browser(address="10.0.1.1"), owner).status_code == 303
    console.clock.advance(auth.ACCOUNT_REFILL_S)
    assert console.login(console.browser(address="10.0.1.1"), email).status_code == 303


def test_ipv6_clients_are_throttled_by_their_64():
    assert auth.client_key("2001:db8:1:2:3:4:5:6") == auth.client_key("2001:db8:1:2:ffff::1")
    assert auth.client_key("2001:db8:1:3::1") != auth.client_key("2001:db8:1:2::1")
    assert auth.client_key("::ffff:10.0.0.1") == "10.0.0.1"
    budget = auth.AttemptBudget(2, 10.0)
    budget.spend("k", 0.0)
    budget.spend("k", 0.0)
    assert budget.retry_after("k", 0.0) == 10
    assert budget.retry_after("k", 5.0) == 5
    assert budget.retry_after("k", 10.0) is None
    assert budget.retry_after("k", -100.0) == 10  # a clock stepping back refills nothing


def test_purge_removes_expired_invites_and_ended_sessions(console):
    from cloud.admin import purge

    owner = console.sign_in("owner")
    invite(owner, "late@acme.test")

    def count(table: str) -> int:
        return int(
            console.database.transact(
                lambda tx: tx.value(f"SELECT COUNT(*) FROM {table}"),  # noqa: S608
                write=False,
            )
        )

    purge(console.database, 3, console.clock())
    assert count("staff_invites") == 1 and count("staff_sessions") == 1
    console.clock.advance(7 * 24 * HOUR)  # the invite expired 4 days ago, the session ended
    purge(console.database, 3, console.clock())
    assert count("staff_invites") == 0 and count("staff_sessions") == 0


# -- sessions --------------------------------------------------------------------------------------


def test_a_session_ends_after_12_idle_hours(console):
    desk = console.sign_in("owner")
    console.clock.advance(12 * HOUR - 60)
    assert desk.get("/console/staff").status_code == 200  # activity: the idle limit restarts
    console.clock.advance(12 * HOUR - 60)
    assert desk.get("/console/staff").status_code == 200
    console.clock.advance(12 * HOUR)
    gone = desk.get("/console/staff")
    assert gone.status_code == 303 and gone.headers["location"].startswith("/console/login")
    before = console.snapshot()
    assert desk.post("/console/staff/invite", {"email": "x@acme.test"}).status_code == 403
    assert console.snapshot() == before


def test_a_session_ends_after_7_days_however_busy(console):
    desk = console.sign_in("owner")
    for _ in range(15):  # every 11 hours: never idle
        console.clock.advance(11 * HOUR)
        assert desk.get("/console/audit").status_code == 200
    console.clock.advance(7 * 24 * HOUR - 15 * 11 * HOUR)
    assert desk.get("/console/audit").status_code == 303


def test_sign_out_ends_the_session_and_needs_the_token(console):
    desk = console.sign_in("staff")
    refused = desk.post("/console/logout", {"csrf": "wrong"})
    assert refused.status_code == 403
    assert desk.get("/console/staff").status_code == 403  # still signed in (as staff)
    token = desk.client.cookies.get("console_session")
    out = desk.post("/console/logout")
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert "Max-Age=0" in out.headers["set-cookie"]
    # The old token is worth nothing, even sent again by hand.
    replay = console.browser()
    replay.cookies.set("console_session", token)
    assert replay.get("/console/staff", follow_redirects=False).status_code == 303
    assert actions(console)[-2:] == ["session.login", "session.logout"]


def test_a_new_sign_in_gets_a_new_token(console):
    client = console.browser()
    email = console.a.people["owner"].email
    console.login(client, email)
    first = client.cookies.get("console_session")
    # Signed in, the sign-in page sends the browser on; a sign-in posted anyway starts afresh.
    assert client.get("/console/login", follow_redirects=False).headers["location"] == ("/console/")
    again = client.post(
        "/console/login",
        data={"csrf": client.cookies.get("console_form"), "email": email, "password": PASSWORD},
        follow_redirects=False,
    )
    assert again.status_code == 303
    assert client.cookies.get("console_session") not in (None, first)


def test_cookie_flags_over_http_and_https(console):
    email = console.a.people["owner"].email
    plain = console.login(console.browser(), email)
    cookie = plain.headers["set-cookie"]
    assert cookie.startswith("console_session=")
    for flag in ("HttpOnly", "Path=/", "SameSite=strict", f"Max-Age={auth.ABSOLUTE_S}"):
        assert flag in cookie
    assert "Secure" not in cookie and "Domain" not in cookie
    form = console.browser().get("/console/login").headers["set-cookie"]
    assert form.startswith("console_form=") and "HttpOnly" in form and "SameSite=strict" in form

    secure_client = console.browser(https=True)
    page = secure_client.get("/console/login")
    assert page.headers["set-cookie"].startswith("__Host-console_form=")
    answer = secure_client.post(
        "/console/login",
        data={"csrf": form_csrf(page.text), "email": email, "password": PASSWORD, "next": ""},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("__Host-console_session=") and "Secure" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie
    assert secure_client.get("/console/staff").status_code == 200
    assert HTTPS_ORIGIN.startswith("https://")


def test_disabling_an_account_ends_its_sessions_and_a_role_change_applies_at_once(console):
    owner = console.sign_in("owner")
    staff = console.sign_in("staff")
    trainer = console.sign_in("trainer")
    assert staff.get("/console/staff").status_code == 403
    changed = owner.post(f"/console/staff/{staff.person.id}/role", {"role": "owner"})
    assert changed.status_code == 303
    assert staff.get("/console/staff").status_code == 200  # no new sign-in needed
    assert owner.post(f"/console/staff/{trainer.person.id}/disable").status_code == 303
    assert trainer.get("/console/audit").status_code == 303  # signed out
    assert console.login(console.browser(), trainer.person.email).status_code == 401


# -- CSRF, origin and headers ----------------------------------------------------------------------


def test_forged_posts_change_nothing(console):
    desk = console.sign_in("owner")
    before = console.snapshot()
    data = {"email": "forged@acme.test", "role": "owner"}
    forged = [
        desk.post("/console/staff/invite", {**data, "csrf": ""}),
        desk.post("/console/staff/invite", {**data, "csrf": "guess"}),
        desk.post("/console/staff/invite", data, headers={"Origin": "https://evil.example"}),
        desk.post("/console/staff/invite", data, headers={"Origin": "null"}),
        desk.post(
            "/console/staff/invite",
            content=json.dumps({**data, "csrf": desk.csrf}),
            headers={"Content-Type": "application/json"},
        ),
        desk.post(
            "/console/staff/invite",
            content=f"csrf={desk.csrf}&email=forged@acme.test&role=owner",
            headers={"Content-Type": "text/plain"},
        ),
    ]
    assert [a.status_code for a in forged] == [403, 403, 403, 403, 415, 415]
    assert "Nothing was changed" in forged[0].text
    assert console.snapshot() == before
    # A Referer of this site stands in for a missing Origin; another site's does not.
    bare = console.browser(origin=False)
    bare.cookies = desk.client.cookies
    evil = bare.post(
        "/console/staff/invite",
        data={**data, "csrf": desk.csrf},
        headers={"Referer": "https://evil.example/page"},
        follow_redirects=False,
    )
    assert evil.status_code == 403 and console.snapshot() == before
    ok = bare.post(
        "/console/staff/invite",
        data={**data, "csrf": desk.csrf},
        headers={"Referer": "http://testserver/console/staff"},
        follow_redirects=False,
    )
    assert ok.status_code == 200 and console.snapshot() != before


def test_the_sign_in_form_has_its_own_csrf_check(console):
    email = console.a.people["owner"].email
    client = console.browser()
    page = client.get("/console/login")
    token = form_csrf(page.text)
    good = {"csrf": token, "email": email, "password": PASSWORD, "next": ""}
    assert (
        client.post(
            "/console/login", data={**good, "csrf": "x"}, follow_redirects=False
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/console/login",
            data=good,
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        ).status_code
        == 403
    )
    stranger = console.browser()  # no form cookie: the token alone is not enough
    assert stranger.post("/console/login", data=good, follow_redirects=False).status_code == 403
    assert client.post("/console/login", data=good, follow_redirects=False).status_code == 303


def test_security_headers_on_every_console_answer(console):
    owner = console.sign_in("owner")
    trainer = console.sign_in("trainer")
    anonymous = console.browser()
    answers = {
        "login": anonymous.get("/console/login"),
        "invite": anonymous.get("/console/invite"),
        "redirect": anonymous.get("/console/staff", follow_redirects=False),
        "refused post": anonymous.post("/console/logout", data={"csrf": "x"}),
        "staff": owner.get("/console/staff"),
        "audit": owner.get("/console/audit"),
        "detail": owner.get(f"/console/staff/{console.a.people['staff'].id}"),
        "not found": owner.get("/console/staff/stf_nope"),
        "unknown page": owner.get("/console/no/such/page"),
        "role refused": trainer.get("/console/audit"),
        "wrong method": owner.client.put("/console/staff"),
        "css": anonymous.get("/console/static/console.css"),
        "js": anonymous.get("/console/static/console.js"),
        "no file": anonymous.get("/console/static/nope.js"),
    }
    for name, answer in answers.items():
        headers = answer.headers
        assert headers["content-security-policy"] == CSP, name
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["x-frame-options"] == "DENY", name
        assert headers["referrer-policy"] == "same-origin", name
        static = name in ("css", "js", "no file")
        assert headers["cache-control"] == ("public, max-age=3600" if static else "no-store"), name
        if answer.status_code >= 400:
            assert headers["content-type"].startswith("text/html"), name
            assert "Traceback" not in answer.text
    assert CSP == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    # No inline script or style anywhere (the CSP would block them anyway).
    for name in ("login", "invite", "staff", "audit", "detail"):
        text = answers[name].text
        assert "<script>" not in text and "<style" not in text and " style=" not in text, name
        assert " on" + "click=" not in text
    # The rest of the cloud keeps its own answers.
    assert "content-security-policy" not in console.browser().get("/healthz").headers


# -- roles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["staff", "trainer"])
def test_staff_and_trainers_cannot_reach_owner_pages(console, role):
    desk = console.sign_in(role)
    other = console.a.people["owner"]
    before = console.snapshot()
    for path in ("/console/staff", "/console/audit", f"/console/staff/{other.id}"):
        answer = desk.get(path)
        assert answer.status_code == 403 and "Not for your role" in answer.text, path
    for path, data in [
        ("/console/staff/invite", {"email": "x@acme.test", "role": "owner"}),
        (f"/console/staff/{desk.person.id}/role", {"role": "owner"}),
        (f"/console/staff/{other.id}/disable", {}),
    ]:
        assert desk.post(path, data).status_code == 403, path
    assert console.snapshot() == before


def test_navigation_follows_the_role(console):
    def links(role: str) -> list[str]:
        page = console.sign_in(role).get("/console/audit")
        nav = page.text.split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
        return re.findall(r">([A-Za-z]+)</a>", nav)

    for role in ("owner", "staff", "trainer"):
        assert links(role) == [label for _key, label, _href, roles in NAV if role in roles]
    assert links("owner") == ["Today", "Members", "Doors", "Staff", "Audit"]
    assert "Staff" not in links("staff") and "Audit" not in links("trainer")
    assert "Doors" not in links("trainer")
    # A signed-in person keeps the menu on a page that does not exist.
    assert 'href="/console/staff"' in console.sign_in("owner").get("/console/no/such").text


# -- the staff page and the audit log --------------------------------------------------------------


def test_the_organisation_keeps_an_owner_and_nobody_disables_themselves(console):
    owner = console.sign_in("owner")
    me = console.a.people["owner"]
    before = console.snapshot()
    demote = owner.post(f"/console/staff/{me.id}/role", {"role": "staff"})
    assert demote.status_code == 409 and "keep an enabled owner" in error_of(demote)
    itself = owner.post(f"/console/staff/{me.id}/disable")
    assert itself.status_code == 409 and "your own account" in error_of(itself)
    bad_role = owner.post(f"/console/staff/{me.id}/role", {"role": "king"})
    assert bad_role.status_code == 422
    assert console.snapshot() == before
    # With a second owner, the first may step down.
    second = console.a.people["staff"]
    assert owner.post(f"/console/staff/{second.id}/role", {"role": "owner"}).status_code == 303
    assert owner.post(f"/console/staff/{me.id}/role", {"role": "staff"}).status_code == 303
    assert owner.get("/console/staff").status_code == 403


def test_trainers_are_assigned_members(console):
    owner = console.sign_in("owner")
    trainer = console.a.people["trainer"]
    member = console.member(console.a, "Mia", "Member")
    other_org_member = console.member(console.b, "Bea", "Brawn")
    page = f"/console/staff/{trainer.id}"
    assert owner.post(f"{page}/members", {"member_id": member}).headers["location"] == (
        f"{page}?done=assigned"
    )
    assert (
        owner.post(f"{page}/members", {"member_id": member})
        .headers["location"]
        .endswith("done=already")
    )
    shown = owner.get(page)
    assert "Mia Member" in shown.text and "The member was assigned" not in shown.text
    for bad in (other_org_member, "mbr_nope", ""):
        refused = owner.post(f"{page}/members", {"member_id": bad})
        assert refused.status_code == 422 and "no member" in error_of(refused).lower(), bad
    not_trainer = owner.post(
        f"/console/staff/{console.a.people['staff'].id}/members", {"member_id": member}
    )
    assert not_trainer.status_code == 422
    removed = owner.post(f"{page}/members/{member}/remove")
    assert removed.status_code == 303
    assert owner.post(f"{page}/members/{member}/remove").status_code == 404
    assert "Mia Member" not in owner.get(page).text


def test_every_change_writes_an_audit_row_with_its_address(console):
    owner = console.sign_in("owner")
    me = console.a.people["owner"]
    staff, trainer = console.a.people["staff"], console.a.people["trainer"]
    member = console.member(console.a, "Ada", "Audit")
    start = len(console.audit(console.a))
    token = invite(owner, "new@acme.test", "staff")
    owner.post(f"/console/staff/{staff.id}/role", {"role": "trainer"})
    owner.post(f"/console/staff/{trainer.id}/members", {"member_id": member})
    owner.post(f"/console/staff/{trainer.id}/members/{member}/remove")
    owner.post(f"/console/staff/{staff.id}/disable")
    accept(console, token)
    owner.post("/console/logout")
    rows = console.audit(console.a)[start:]
    assert [r["action"] for r in rows] == [
        "staff.invite",
        "staff.role",
        "trainer.assign",
        "trainer.unassign",
        "staff.disable",
        "staff.join",
        "session.login",
        "session.logout",
    ]
    assert all(r["address"] == "testclient" for r in rows)
    by_owner = [r for r in rows if r["action"] not in ("staff.join", "session.login")]
    assert all(r["staff_id"] == me.id for r in by_owner)
    assert rows[0]["target"] == "new@acme.test" and "front desk" in rows[0]["detail"]
    assert rows[1]["target"] == staff.id and "front desk → trainer" in rows[1]["detail"]
    assert rows[2]["target"] == member and "Ada Audit" in rows[2]["detail"]
    assert all(r["at"] == "2026-05-01T12:00:00.000000Z" for r in rows)
    # No secret in any row: no token, no password, no hash.
    text = json.dumps(console.audit(console.a))
    assert token not in text and NEW_PASSWORD not in text and "scrypt$" not in text
    # Nothing refused leaves a row.
    before = len(console.audit(console.a))
    console.sign_in("trainer").post("/console/staff/invite", {"email": "y@acme.test"})
    assert len(console.audit(console.a)) == before + 1  # the trainer's sign-in only


def test_the_audit_page_is_newest_first_and_paged(console):
    owner = console.sign_in("owner")
    for n in range(60):
        invite(owner, f"person{n}@acme.test")
    first = owner.get("/console/audit")
    assert first.status_code == 200
    emails = re.findall(r">person(\d+)@acme.test<", first.text)
    assert emails[:3] == ["59", "58", "57"] and len(emails) == 50
    older = re.search(r'href="/console/audit\?before=(\d+)"', first.text)
    assert older is not None
    second = owner.get(f"/console/audit?before={older.group(1)}")
    rest = re.findall(r">person(\d+)@acme.test<", second.text)
    assert rest[:2] == ["9", "8"] and "session.login" in second.text
    assert "?before=" not in second.text  # the last page
    assert owner.get("/console/audit?before=junk").status_code == 200
    # Times are shown in the gym's zone.
    assert "2026-05-01 14:00 CEST" in first.text
    # Another organisation's owner sees none of it.
    assert "person" not in console.sign_in("owner", console.b).get("/console/audit").text


# -- behind a TLS-terminating proxy ------------------------------------------------------------------


def _cookie(answer, name: str) -> str:
    found = re.search(rf"{re.escape(name)}=([^;]+);([^,]*)", answer.headers["set-cookie"])
    assert found is not None, answer.headers["set-cookie"]
    assert "Secure" in found.group(2) and "HttpOnly" in found.group(2)
    return found.group(1)


def test_behind_a_tls_proxy_the_public_url_names_the_origin_and_secures_cookies(
    cloud_db_url, monkeypatch, capsys
):
    monkeypatch.setenv(auth.PUBLIC_URL_ENV, "https://Cloud.Example.com/")
    rig = ConsoleRig(cloud_db_url)
    public = {"Origin": "https://cloud.example.com"}
    try:
        # The proxy forwards plain HTTP; the browser speaks HTTPS and sends its own origin.
        client = rig.browser(origin=False)
        page = client.get("/console/login")
        form = _cookie(page, "__Host-console_form")
        data = {"csrf": form, "email": rig.a.people["owner"].email, "password": PASSWORD}
        jar = {"Cookie": f"__Host-console_form={form}"}
        local = client.post(
            "/console/login",
            data=data,
            headers={**jar, "Origin": "http://testserver"},
            follow_redirects=False,
        )
        assert local.status_code == 403  # not the origin browsers use
        answer = client.post(
            "/console/login", data=data, headers={**jar, **public}, follow_redirects=False
        )
        assert answer.status_code == 303
        session = {"Cookie": f"__Host-console_session={_cookie(answer, '__Host-console_session')}"}
        staff = client.get("/console/staff", headers=session)
        assert staff.status_code == 200
        made = client.post(
            "/console/staff/invite",
            data={"csrf": form_csrf(staff.text), "email": "new@acme.test", "role": "staff"},
            headers={**session, **public},
        )
        assert 'value="https://cloud.example.com/console/invite#' in made.text
    finally:
        rig.close()
    for bad in ("ftp://x.example", "https://x.example/console", "https://u@x.example", "x"):
        with pytest.raises(ValueError):
            auth.public_origin(bad)
    assert auth.public_origin("  ") is None
    assert cli.main(["serve", "--db", cloud_db_url, "--public-url", "cloud.example"]) == 2
    assert "--public-url" in capsys.readouterr().err
