"""The ``cloud`` commands: run and administer the reference cloud.

    kiosk cloud serve --db URL [--host 127.0.0.1] [--port 8080] [--workers N] [--max-in-flight N] [--public-url URL]
    kiosk cloud migrate --db URL
    kiosk cloud init --db URL --org NAME --gym NAME [--timezone Europe/Berlin] [--json]
    kiosk cloud admin-token --db URL --org ORG_ID [--json]
    kiosk cloud enrolment-code --db URL --gym GYM_ID [--ttl-minutes 60] [--json]
    kiosk cloud pass-activation --db URL --member ID [--ttl-minutes 15] [--base-url URL] [--json]
    kiosk cloud passes --db URL --member ID [--json]
    kiosk cloud revoke-pass --db URL --pass ID [--json]
    kiosk cloud card --db URL --member ID [--gym GYM_ID] [--format svg|png] --output FILE
    kiosk cloud purge --db URL [--older-than-days 30]
    kiosk cloud invite --db URL --org ORG_ID --email E --role owner|staff|trainer [--base-url URL] [--json]

``invite`` makes a single-use, 72-hour link to the staff console (docs/console.md): the first owner
of an organisation comes from here. (``python -m cloud.cli ACTION ...`` works the same.) ``--db`` defaults to
``$FITFLOW_CLOUD_DB``; prefer the variable for a PostgreSQL URL with a password, which would
otherwise show in the process list. Secrets (admin tokens, enrolment and pass activation codes)
and invite links are printed once, to stdout, and never logged. A member or pass is named by its id; ``--org``
picks the organisation when several hold that id.

``serve --workers N`` runs N worker processes on one port (``cloud.serve``); more than one needs
PostgreSQL. ``--max-in-flight N`` (default ``$FITFLOW_CLOUD_MAX_IN_FLIGHT``, else 128) caps each
process's device requests in flight: past it a device request is answered 503 with Retry-After.

Exit codes: 0 success; 2 usage or configuration error (bad URL, unknown organisation, gym,
member or pass, invalid name, email, role or time zone, an email that already has an account, a member at their limit of passes, ``--max-in-flight`` below 1, ``--workers`` above
1 on SQLite, a port that cannot be bound, a card file that cannot be written); 3 database error
(unreachable, damaged, newer schema, a worker that could not start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_DATABASE = 0, 2, 3
DB_ENV = "FITFLOW_CLOUD_DB"
# The serve option's default (``--max-in-flight``); the value is per process (per worker).
MAX_IN_FLIGHT_ENV = "FITFLOW_CLOUD_MAX_IN_FLIGHT"


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, code: int) -> int:
    print(f"cloud: {message}", file=sys.stderr)
    return code


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Runs an action, turning the cloud's errors into a message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from cloud.db import DatabaseError, DatabaseUrlError
        from cloud.errors import ServiceError

        if not args.db:
            return _fail(f"no database: pass --db URL or set {DB_ENV}", EXIT_USAGE)
        try:
            return action(args)
        except DatabaseUrlError as exc:
            return _fail(f"invalid database URL: {exc}", EXIT_USAGE)
        except ServiceError as exc:
            return _fail(exc.detail or exc.code, EXIT_USAGE)
        except DatabaseError as exc:
            return _fail(f"database error: {exc}", EXIT_DATABASE)

    return run


def _open(url: str) -> Any:
    from cloud.db import Database
    from cloud.migrations import migrate

    database = Database(url, pool_size=2)
    try:
        migrate(database)
    except BaseException:
        database.close()
        raise
    return database


def _print(args: argparse.Namespace, data: dict[str, Any], lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        print("\n".join(lines))


@_guarded
def cmd_serve(args: argparse.Namespace) -> int:
    from cloud.serve import ServeError, serve
    from sync.protocol import is_loopback

    if not is_loopback(args.host):
        print(
            f"cloud: warning: serving plain HTTP on {args.host}: device and admin tokens would "
            "cross the network in clear text. Put a TLS-terminating reverse proxy in front "
            "(and bind this service to 127.0.0.1 behind it).",
            file=sys.stderr,
        )
    from cloud.console.auth import PUBLIC_URL_ENV, public_origin

    try:
        public = public_origin(args.public_url)
    except ValueError:
        return _fail(
            "--public-url: expected the address browsers use, like https://cloud.example.com",
            EXIT_USAGE,
        )
    if public is not None:
        # Read by every worker's app (cloud.console.install): the console's origin and cookies.
        os.environ[PUBLIC_URL_ENV] = public
    try:
        return serve(
            args.db,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            max_in_flight=args.max_in_flight,
        )
    except ServeError as exc:
        return _fail(str(exc), EXIT_USAGE)


@_guarded
def cmd_migrate(args: argparse.Namespace) -> int:
    from cloud.db import Database
    from cloud.migrations import migrate, schema_version

    database = Database(args.db, pool_size=1)
    try:
        applied = migrate(database)
        version = schema_version(database)
    finally:
        database.close()
    names = ", ".join(f"{m.version} ({m.name})" for m in applied) or "none"
    print(f"{database.url.display()}: schema at migration {version}; applied now: {names}")
    return EXIT_OK


@_guarded
def cmd_init(args: argparse.Namespace) -> int:
    from cloud.admin import create_organization

    database = _open(args.db)
    try:
        made = create_organization(database, args.org, args.gym, args.timezone, _now())
    finally:
        database.close()
    data = {
        "organization_id": made.organization_id,
        "gym_id": made.gym_id,
        "admin_token": made.admin_token,
    }
    _print(
        args,
        data,
        [
            f"organization_id: {made.organization_id}",
            f"gym_id:          {made.gym_id}",
            f"admin_token:     {made.admin_token}",
            "Store the admin token now: it is shown only this once "
            "(make another with `cloud admin-token`).",
        ],
    )
    return EXIT_OK


@_guarded
def cmd_admin_token(args: argparse.Namespace) -> int:
    from cloud.admin import create_admin_token

    database = _open(args.db)
    try:
        token = database.transact(lambda tx: create_admin_token(tx, args.org, _now()))
    finally:
        database.close()
    _print(
        args,
        {"organization_id": args.org, "admin_token": token},
        [f"admin_token: {token}", "Store it now: it is shown only this once."],
    )
    return EXIT_OK


@_guarded
def cmd_enrolment_code(args: argparse.Namespace) -> int:
    from cloud import db
    from cloud.admin import create_enrolment_code
    from cloud.errors import NotFound

    def make(tx: db.Tx) -> dict[str, Any]:
        gym = db.gym_any_org(tx, args.gym)
        if gym is None:
            raise NotFound(f"no gym {args.gym}")
        return create_enrolment_code(tx, gym["organization_id"], args.gym, args.ttl_minutes, _now())

    database = _open(args.db)
    try:
        made = database.transact(make)
    finally:
        database.close()
    _print(
        args,
        made,
        [
            f"enrolment code: {made['code']}",
            f"gym: {made['gym_id']}, single use, valid until {made['expires_at']}",
        ],
    )
    return EXIT_OK


def _organization_of(tx: Any, kind: str, row_id: str, org: str | None) -> str:
    """The organisation of a live member or pass named by id alone (``org`` when given): the
    CLI is the operator's, who may not know it. NotFound for none; Invalid when several
    organisations hold the id (then ``--org`` says which)."""
    from cloud import db
    from cloud.errors import Invalid, NotFound

    if org is not None:
        return org
    found = db.organizations_with_row(tx, kind, row_id)
    if not found:
        raise NotFound(f"no {kind} {row_id}")
    if len(found) > 1:
        raise Invalid([("--org", f"{kind} {row_id} exists in {', '.join(found)}: pass --org")])
    return found[0]


def _in_organization(args: argparse.Namespace, kind: str, row_id: str, action: Any) -> Any:
    """``action(tx, organisation)`` in one transaction on ``args.db``."""
    database = _open(args.db)
    try:
        return database.transact(
            lambda tx: action(tx, _organization_of(tx, kind, row_id, args.org))
        )
    finally:
        database.close()


@_guarded
def cmd_pass_activation(args: argparse.Namespace) -> int:
    from cloud.passes import create_activation

    base = None
    if args.base_url is not None:
        base = args.base_url.strip().rstrip("/")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
            return _fail(
                "--base-url: expected the cloud's address, like https://cloud.example", EXIT_USAGE
            )
    made = _in_organization(
        args,
        "member",
        args.member,
        lambda tx, org: create_activation(tx, org, args.member, args.ttl_minutes, _now()),
    )
    lines = [
        f"activation code: {made['code']}",
        f"member: {made['member_id']}, one phone pass, single use, valid until "
        f"{made['expires_at']}",
    ]
    if base is not None:
        made["link"] = base + made["activation_path"]
        lines.append(f"link: {made['link']}")
    else:
        lines.append(f"on the pass page: <cloud address>{made['activation_path']}")
    _print(args, made, lines)
    return EXIT_OK


@_guarded
def cmd_passes(args: argparse.Namespace) -> int:
    from cloud.passes import list_passes

    listed = _in_organization(
        args, "member", args.member, lambda tx, org: list_passes(tx, org, args.member)
    )
    items = listed["items"]
    lines = [
        f"{p['id']}  {p['status']:<7}  every {p['period_s']} s  created {p['created_at']}"
        + (f"  revoked {p['revoked_at']}" if p["revoked_at"] else "")
        for p in items
    ]
    _print(args, listed, lines or [f"member {args.member} has no phone passes"])
    return EXIT_OK


@_guarded
def cmd_revoke_pass(args: argparse.Namespace) -> int:
    from cloud.passes import revoke_pass

    revoked = _in_organization(
        args, "pass", args.pass_id, lambda tx, org: revoke_pass(tx, org, args.pass_id, _now())
    )
    _print(
        args,
        revoked,
        [
            f"pass {revoked['id']} of member {revoked['member_id']}: REVOKED at "
            f"{revoked['revoked_at']}; doors refuse it after their next pull"
        ],
    )
    return EXIT_OK


@_guarded
def cmd_card(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cloud import cards
    from cloud.admin import member_card

    output = Path(args.output)
    kind = args.format or output.suffix.lower().lstrip(".")
    if kind not in ("svg", "png"):
        return _fail("--format: svg or png (or an --output ending in .svg or .png)", EXIT_USAGE)
    card = _in_organization(
        args, "member", args.member, lambda tx, org: member_card(tx, org, args.member, args.gym)
    )
    if kind == "svg":
        content = cards.card_svg(
            card["code"],
            first_name=card["first_name"],
            last_name=card["last_name"],
            organization_name=card["organization_name"],
            gym_name=card["gym_name"],
        ).encode("utf-8")
    else:
        content = cards.card_png(card["code"])
    try:
        output.write_bytes(content)
    except OSError as exc:
        return _fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE)
    print(f"{output}: the {kind} card of member {args.member} ({len(content)} bytes)")
    return EXIT_OK


def _base_url(text: str | None) -> str | None:
    """The cloud's public address from ``--base-url`` (no trailing slash); ValueError if it is
    not one."""
    if text is None:
        return None
    base = text.strip().rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
        raise ValueError(base)
    return base


@_guarded
def cmd_invite(args: argparse.Namespace) -> int:
    from cloud.console import accounts, audit

    try:
        base = _base_url(args.base_url)
    except ValueError:
        return _fail(
            "--base-url: expected the cloud's address, like https://cloud.example", EXIT_USAGE
        )
    database = _open(args.db)
    try:
        made = database.transact(
            lambda tx: accounts.create_invite(
                tx, args.org, args.email, args.role, None, _now(), audit.CLI_ADDRESS
            )
        )
    finally:
        database.close()
    data: dict[str, Any] = {
        "organization_id": made.organization_id,
        "email": made.email,
        "role": made.role,
        "expires_at": made.expires_at,
        "invite_path": made.path,
    }
    lines = [f"invite for {made.email} ({made.role}), single use, valid until {made.expires_at}"]
    if base is not None:
        data["link"] = base + made.path
        lines.append(f"link: {data['link']}")
    else:
        lines.append(f"link: <cloud address>{made.path}")
    lines.append("Send the link now: it is shown only this once.")
    _print(args, data, lines)
    return EXIT_OK


@_guarded
def cmd_purge(args: argparse.Namespace) -> int:
    from cloud.admin import purge

    database = _open(args.db)
    try:
        purged = purge(database, args.older_than_days, _now())
    finally:
        database.close()
    if not purged:
        print(f"no tombstones older than {args.older_than_days} days")
    for org, version in sorted(purged.items()):
        print(f"{org}: tombstones purged up to version {version}")
    return EXIT_OK


def _add_actions(sub: Any) -> None:
    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--db",
            default=os.environ.get(DB_ENV),
            help=f"sqlite:///PATH, a file path or postgresql://... (default: ${DB_ENV})",
        )
        return p

    p = with_db(sub.add_parser("serve", help="run the cloud service (HTTP)"))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8080, help="port (default 8080; 0 picks a free one, printed)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port (default 1; more than 1 needs PostgreSQL)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=os.environ.get(MAX_IN_FLIGHT_ENV),
        metavar="N",
        help="device requests each process serves at once; past them a device request is "
        f"answered 503 with Retry-After at once (default: ${MAX_IN_FLIGHT_ENV}, else 128)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--public-url",
        default=os.environ.get("FITFLOW_CLOUD_PUBLIC_URL"),
        metavar="URL",
        help="the address browsers use for the staff console behind a TLS proxy, like "
        "https://cloud.example.com (default: $FITFLOW_CLOUD_PUBLIC_URL)",
    )
    p.set_defaults(func=cmd_serve)

    p = with_db(sub.add_parser("migrate", help="apply the database schema migrations"))
    p.set_defaults(func=cmd_migrate)

    p = with_db(
        sub.add_parser("init", help="create an organisation, its first gym, an admin token")
    )
    p.add_argument("--org", required=True, help="organisation name")
    p.add_argument("--gym", required=True, help="first gym's name")
    p.add_argument("--timezone", default="Europe/Berlin", help="the gym's IANA time zone")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_init)

    p = with_db(sub.add_parser("admin-token", help="make another admin token for an organisation"))
    p.add_argument("--org", required=True, help="organisation id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_admin_token)

    p = with_db(sub.add_parser("enrolment-code", help="make a single-use device enrolment code"))
    p.add_argument("--gym", required=True, help="gym id")
    p.add_argument(
        "--ttl-minutes", type=int, default=60, help="validity in minutes, 1-1440 (default 60)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_enrolment_code)

    def with_org(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--org",
            default=None,
            metavar="ORG_ID",
            help="organisation id (needed only when several organisations hold the id)",
        )

    p = with_db(
        sub.add_parser(
            "pass-activation", help="make a single-use phone pass activation code for a member"
        )
    )
    p.add_argument("--member", required=True, metavar="ID", help="member id")
    with_org(p)
    p.add_argument(
        "--ttl-minutes", type=int, default=15, help="validity in minutes, 1-1440 (default 15)"
    )
    p.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="the cloud's public address (https://...): print the whole activation link",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_pass_activation)

    p = with_db(sub.add_parser("passes", help="list a member's phone passes"))
    p.add_argument("--member", required=True, metavar="ID", help="member id")
    with_org(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_passes)

    p = with_db(
        sub.add_parser("revoke-pass", help="revoke a phone pass (a lost phone): doors refuse it")
    )
    p.add_argument("--pass", dest="pass_id", required=True, metavar="ID", help="pass id")
    with_org(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_revoke_pass)

    p = with_db(
        sub.add_parser("card", help="write a member's printable card (QR of the card code)")
    )
    p.add_argument("--member", required=True, metavar="ID", help="member id")
    with_org(p)
    p.add_argument("--gym", default=None, metavar="GYM_ID", help="also print this gym's name")
    p.add_argument(
        "--format",
        choices=["svg", "png"],
        default=None,
        help="svg: the whole card, 85.6 x 54 mm; png: the QR code alone "
        "(default: from the --output suffix)",
    )
    p.add_argument("--output", required=True, metavar="FILE", help="the file to write")
    p.set_defaults(func=cmd_card)

    p = with_db(
        sub.add_parser(
            "invite", help="make a single-use link to join the staff console (the first owner)"
        )
    )
    p.add_argument("--org", required=True, metavar="ORG_ID", help="organisation id")
    p.add_argument("--email", required=True, help="the person's email address (their sign-in)")
    p.add_argument(
        "--role",
        required=True,
        choices=["owner", "staff", "trainer"],
        help="owner: everything; staff: the front desk; trainer: their assigned members",
    )
    p.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="the cloud's public address (https://...): print the whole link",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_invite)

    p = with_db(sub.add_parser("purge", help="delete old tombstones (devices behind re-snapshot)"))
    p.add_argument(
        "--older-than-days", type=int, default=30, help="tombstone age in days (default 30)"
    )
    p.set_defaults(func=cmd_purge)


def register(subparsers: Any) -> None:
    """Add the ``cloud`` command tree to a parser's subparsers (``kiosk cloud ...``)."""
    parser = subparsers.add_parser(
        "cloud",
        help="the reference cloud service: serve, migrate, init, tokens, enrolment codes, passes, cards, "
        "console invites",
    )
    _add_actions(parser.add_subparsers(dest="cloud_command", required=True, metavar="ACTION"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cloud.cli", description="The FitFlow reference cloud service."
    )
    _add_actions(parser.add_subparsers(dest="cloud_command", required=True, metavar="ACTION"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m cloud.cli ACTION ...`` (a leading ``cloud`` is accepted too)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["cloud"]:
        args_list = args_list[1:]
    args = build_parser().parse_args(args_list)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
