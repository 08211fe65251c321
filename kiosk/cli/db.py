"""The ``db`` and ``logs`` commands: back up, restore and check the local database; read the logs.

    kiosk db backup  [--dir DIR] [--keep 7] [--db PATH] [--config PATH]
    kiosk db restore FILE [--yes] [--force] [--db PATH] [--config PATH]
    kiosk db check   [--db PATH] [--config PATH]
    kiosk logs [-f] [--unit scanner|sync|web|backup|all] [-n N] [--since WHEN]

(``python -m kiosk.cli.db ...`` works the same, and takes the tests' stand-ins for the outside
world.) The database is ``store.path`` from the
configuration (``$KIOSK_CONFIG`` or /etc/fitflow-kiosk/kiosk.toml, ``KIOSK_STORE_PATH`` overrides)
unless ``--db`` names it. Backups go to ``<database folder>/backups`` unless ``--dir`` says
otherwise. A backup holds the journal database; the member replica (a file of its own beside it)
is not in it: it is the cloud's data, pulled again, and a restore leaves the one beside the
database in use (``kiosk.ops.backup`` says why). The work is in ``kiosk.ops.backup`` and
``kiosk.ops.logs``; this module only parses and prints.

Exit codes: 0 success; 1 refused for now (a kiosk service runs or the database is open elsewhere,
the restore was not confirmed, journalctl missing); 2 usage or configuration; 3 the database
cannot be used (missing, damaged, foreign, newer schema, disk full).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from kiosk.cli import COMMANDS
from kiosk.cli.common import EXIT_CONFIG, EXIT_DATABASE, add_config_option, load_config

EXIT_USAGE = EXIT_CONFIG  # usage or configuration


def _fail(message: str, code: int) -> int:
    print(f"kiosk db: {message}", file=sys.stderr)
    return code


def _database(args: argparse.Namespace) -> Path | None:
    """The database file from ``--db`` or the configuration; None after printing the config's
    errors."""
    if args.db:
        return Path(args.db)
    config = load_config(args.config)
    return None if config is None else Path(config.store.path)


def _now(args: argparse.Namespace) -> datetime:
    clock = getattr(args, "clock", None)
    return clock() if clock is not None else datetime.now(UTC)


def _ask(question: str) -> bool:
    """The restore prompt on a terminal: only a typed ``yes`` goes ahead."""
    print(question)
    if not sys.stdin.isatty():
        print("not a terminal: pass --yes to restore without a prompt", file=sys.stderr)
        return False
    try:
        return input("Type yes to restore: ").strip().lower() == "yes"
    except EOFError:
        return False


def cmd_backup(args: argparse.Namespace) -> int:
    from kiosk.ops.backup import DbError, default_backup_dir, make_backup

    database = _database(args)
    if database is None:
        return EXIT_USAGE
    directory = Path(args.dir) if args.dir else default_backup_dir(database)
    try:
        made = make_backup(database, directory, now=_now(args), keep=args.keep)
    except DbError as exc:
        return _fail(str(exc), exc.exit_code)
    pending = (made.report.checkins or {}).get("pending", 0)
    print(
        f"backup {made.path} ({made.size_bytes:,} bytes, integrity ok, schema "
        f"{made.report.schema_version}, last seq {made.report.last_seq}, {pending} pending; the "
        f"journal only: the replica is pulled again from the cloud)"
    )
    for old in made.deleted:
        print(f"deleted old backup {old}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from kiosk.ops.backup import DbError, active_services, restore_backup

    database = _database(args)
    if database is None:
        return EXIT_USAGE
    asked: Callable[[str], bool] = getattr(args, "confirm", None) or _ask
    confirm = (lambda _question: True) if args.yes else asked
    services = getattr(args, "services", None) or active_services
    try:
        done = restore_backup(
            database,
            Path(args.file),
            now=_now(args),
            confirm=confirm,
            services=services,
            force=args.force,
        )
    except DbError as exc:
        return _fail(str(exc), exc.exit_code)
    c = done.checkins
    migrated = (
        f", migrated from schema {done.before.schema_version}"
        if done.before.schema_version != done.schema_version
        else ""
    )
    print(f"restored {args.file} into {done.database} (schema {done.schema_version}{migrated})")
    print(
        f"check-ins: {sum(c.values())} (pending {c['pending']}, synced {c['synced']}, rejected "
        f"{c['rejected']}), last seq {done.last_seq}; pending ones upload when sync runs"
    )
    if done.kept_as is not None:
        print(f"the previous database was kept as {done.kept_as}")
    if done.replica is None:
        print("no member replica beside it yet: the sync agent pulls one at its next round")
    else:
        print(f"member replica in use: version {done.replica[0]}, {done.replica[1]} members")
    for warning in done.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("start the kiosk again: sudo systemctl start fitflow-scanner fitflow-sync fitflow-web")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from kiosk.ops.backup import DbError, check_database, describe_report, usability_problems

    database = _database(args)
    if database is None:
        return EXIT_USAGE
    try:
        report = check_database(database)
    except DbError as exc:
        return _fail(str(exc), exc.exit_code)
    problems = usability_problems(report)
    print(f"{database}: {'ok' if not problems else 'NOT usable'}")
    for line in describe_report(report):
        print(f"  {line}")
    for problem in problems:
        print(f"  problem: {problem}")
    if problems:
        print(
            "  the file was left untouched; stop the kiosk and restore a backup: "
            "kiosk db restore FILE",
            file=sys.stderr,
        )
    return EXIT_DATABASE if problems else 0


def cmd_logs(args: argparse.Namespace) -> int:
    from kiosk.ops.logs import show_logs

    kwargs = {}
    for name in ("run", "which"):
        if (value := getattr(args, f"logs_{name}", None)) is not None:
            kwargs[name] = value
    return show_logs(args.unit, follow=args.follow, lines=args.lines, since=args.since, **kwargs)


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="the database file (default: store.path)")
    add_config_option(p)


def _db(db: argparse.ArgumentParser) -> None:
    # The default of --keep is part of the help: kiosk.ops.backup loads when `db` is built.
    from kiosk.ops.backup import DEFAULT_KEEP

    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    p = db_sub.add_parser(
        "backup",
        help="online backup of the live database (safe while the door runs); keeps the newest N",
    )
    p.add_argument("--dir", help="backup folder (default: backups/ beside the database)")
    p.add_argument(
        "--keep",
        type=_count(1),
        default=DEFAULT_KEEP,
        metavar="N",
        help=f"backups to keep, this one included (default {DEFAULT_KEEP})",
    )
    _where(p)
    p.set_defaults(func=cmd_backup)

    p = db_sub.add_parser(
        "restore",
        help="replace the database with a verified backup (stop the kiosk services first)",
    )
    p.add_argument("file", metavar="FILE", help="a backup made by `kiosk db backup`")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--force",
        action="store_true",
        help="restore even if pending check-ins of the current database are missing from the "
        "backup (they stay only in the kept file and are never uploaded)",
    )
    _where(p)
    p.set_defaults(func=cmd_restore)

    p = db_sub.add_parser(
        "check", help="integrity, schema version and counts of the database; exit 3 if unusable"
    )
    _where(p)
    p.set_defaults(func=cmd_check)


def _logs(p: argparse.ArgumentParser) -> None:
    from kiosk.ops.logs import DEFAULT_LINES, UNITS

    p.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    p.add_argument("--unit", choices=list(UNITS), default="all", help="which service (default all)")
    p.add_argument(
        "-n",
        "--lines",
        type=_count(0),
        default=DEFAULT_LINES,
        metavar="N",
        help=f"entries to show first (default {DEFAULT_LINES})",
    )
    p.add_argument("--since", metavar="WHEN", help='e.g. "1 hour ago", "today", "2024-05-06 09:00"')
    p.set_defaults(func=cmd_logs)


_COMMANDS = {"db": _db, "logs": _logs}


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add the command ``name`` of this group (db, logs) to the ``kiosk`` subcommands ``sub``,
    listed with ``help``."""
    _COMMANDS[name](sub.add_parser(name, help=help))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``db`` command tree and ``logs`` to the subcommands ``sub`` (this module's own
    command line), listed with the registry's help."""
    for name in _COMMANDS:
        add(sub, name, COMMANDS[name].help)


def main(
    argv: Sequence[str] | None = None,
    *,
    confirm: Callable[[str], bool] | None = None,
    services: Callable[[], list[str] | None] | None = None,
    clock: Callable[[], datetime] | None = None,
    logs_run: Callable[[Sequence[str]], int] | None = None,
    logs_which: Callable[[str], str | None] | None = None,
) -> int:
    """Run one ``db`` or ``logs`` command. The keywords replace the outside world for tests: the
    restore prompt, the running-services probe (systemctl), the clock, and journalctl's runner and
    lookup. ``kiosk.cli`` reaches the same commands without them."""
    parser = argparse.ArgumentParser(prog="kiosk", description="FitFlow Kiosk database and logs.")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.confirm, args.services, args.clock = confirm, services, clock
    args.logs_run, args.logs_which = logs_run, logs_which
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
