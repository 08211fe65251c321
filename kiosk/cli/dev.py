"""The development tools' commands: ``kiosk demo`` (the door on simulated hardware, with an
embedded cloud and the owner page), ``kiosk decode`` (QR codes in image files) and ``kiosk bench``
(the figures). The work is in ``devtools``.

Imports only argparse-level code at module level: ``devtools``, the cloud (FastAPI, the ``cloud``
extra) and OpenCV load when a command runs, so that ``kiosk --help`` and the device's own
commands never pay for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from kiosk.cli.common import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_RUNTIME,
    at_least,
    port_number,
    setup_logging,
)

BENCH_MEMBERS, BENCH_BACKLOG = 100_000, 10_000
# `kiosk bench --fleet`'s own options (argparse destinations).
_FLEET_OPTIONS = ("retained_rows", "interval", "max_doors", "saturation")


def at_least_seconds(low: float, high: float = 3600.0) -> Callable[[str], float]:
    """An argparse type: a number of seconds, ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected {low:g} to {high:g} s, got {text}")
        return value

    return parse


def cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import DemoError, DemoWebError, run_demo
    from kiosk.data.database import StoreError
    from kiosk.sync.client import CloudError

    cloud_errors: tuple[type[Exception], ...] = (CloudError,)
    if not args.no_cloud:
        # The embedded cloud needs the `cloud` extra (FastAPI); --no-cloud runs without it.
        from cloud.embedded import EmbeddedCloudError

        cloud_errors = (EmbeddedCloudError, CloudError)
    # Decisions go to stdout; logs to stderr, quiet unless something is wrong.
    setup_logging("WARNING")
    try:
        return run_demo(
            db=Path(args.db) if args.db else None,
            as_json=args.json,
            once=args.once,
            out=sys.stdout,
            cloud=not args.no_cloud,
            # 0: the system picks a free port (the page's address is printed first).
            web_port=None if args.no_web else (args.web_port or 0),
        )
    except cloud_errors as exc:
        print(
            f"demo: the embedded cloud failed: {exc} (--no-cloud runs the door alone)",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    except StoreError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except DemoWebError as exc:  # before DemoError, its parent: a taken port is not bad input
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from devtools.decodefiles import decode_files
    from hardware.decode.backends import make_decoder
    from kiosk.door.reader import QrReader

    reader = QrReader(make_decoder(args.decoder), motion_gate=False, retry_on_miss=True)
    return decode_files(args.images, reader, sys.stdout, sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    setup_logging("WARNING")
    chosen = [f"--{name}" for name in ("sync", "web", "fleet", "console") if getattr(args, name)]
    if len(chosen) > 1:
        print(f"bench: choose one of --sync, --web, --fleet and --console (given: "
              f"{' '.join(chosen)})", file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if args.scans is not None and chosen:
        print("bench: --scans only applies to the door bench (without --sync, --web, --fleet "
              "or --console)", file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if args.checkins is not None and not args.web:
        print("bench: --checkins only applies with --web", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers is not None and not (args.fleet or args.console):
        print("bench: --workers only applies with --fleet or --console", file=sys.stderr)
        return EXIT_CONFIG
    fleet_only = [f"--{name.replace('_', '-')}" for name in _FLEET_OPTIONS
                  if getattr(args, name) not in (None, False)]  # fmt: skip
    if fleet_only and not args.fleet:
        print(f"bench: {', '.join(fleet_only)} only apply with --fleet", file=sys.stderr)
        return EXIT_CONFIG
    if args.console:
        if args.backlog is not None:
            print("bench: --backlog only applies with --sync", file=sys.stderr)
            return EXIT_CONFIG
        # The reference cloud (the `cloud` extra) loads when the bench reaches it.
        from devtools.bench.console import console_settings, run_console_bench
        from devtools.bench.sync import BenchError

        given = {"members": args.members, "workers": args.workers}
        try:
            return run_console_bench(
                as_json=args.json,
                postgres_url=args.postgres,
                out=sys.stdout,
                settings=console_settings(**{k: v for k, v in given.items() if v is not None}),
            )
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
    if args.fleet:
        given = [f"--{name}" for name in ("members", "backlog") if getattr(args, name) is not None]
        if given:
            print(f"bench: {', '.join(given)} only apply with --sync", file=sys.stderr)
            return EXIT_CONFIG
        # The reference cloud (the `cloud` extra) loads when the bench reaches it.
        from devtools.bench.fleet import fleet_settings, run_fleet_bench, scale_interval
        from devtools.bench.sync import BenchError

        settings = fleet_settings(saturation=args.saturation)
        if args.retained_rows is not None:
            settings = replace(settings, retained_rows=args.retained_rows)
        if args.max_doors is not None:
            settings = replace(settings, max_doors=args.max_doors)
        if args.interval is not None:
            settings = scale_interval(settings, args.interval)
        try:
            return run_fleet_bench(
                as_json=args.json,
                postgres_url=args.postgres,
                workers=args.workers if args.workers is not None else 1,
                out=sys.stdout,
                settings=settings,
            )
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
    if args.web:
        from devtools.bench.web import BENCH_CHECKINS, BENCH_REQUESTS, WebBenchError, run_web_bench

        try:
            return run_web_bench(
                as_json=args.json,
                checkins=args.checkins if args.checkins is not None else BENCH_CHECKINS,
                requests=BENCH_REQUESTS,
                out=sys.stdout,
            )
        except WebBenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
    if not args.sync:
        given = [f"--{name}" for name in ("postgres", "members", "backlog")
                 if getattr(args, name) is not None]  # fmt: skip
        if given:
            print(f"bench: {', '.join(given)} only apply with --sync, --fleet or --console",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        from devtools.bench.loop import GRANTS
        from devtools.bench.run import run_bench

        return run_bench(
            as_json=args.json,
            frames_per_size=args.frames,
            scans=args.scans if args.scans is not None else GRANTS,
            out=sys.stdout,
        )
    # The reference cloud (the `cloud` extra) loads when the bench reaches it.
    from devtools.bench.sync import BenchError, run_sync_bench

    try:
        return run_sync_bench(
            as_json=args.json,
            members=args.members if args.members is not None else BENCH_MEMBERS,
            backlog=args.backlog if args.backlog is not None else BENCH_BACKLOG,
            postgres_url=args.postgres,
            out=sys.stdout,
        )
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        help="use this database (the cloud's and the device's files go beside it); "
        "default: a temporary one",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line: each decision (after its commit), sync and cloud event",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="play the scenario and the sync story once (simulated clock) and exit",
    )
    p.add_argument(
        "--no-cloud",
        action="store_true",
        help="the door alone: a locally seeded replica, no cloud, no network",
    )
    web = p.add_mutually_exclusive_group()
    web.add_argument(
        "--web-port",
        type=port_number,
        metavar="N",
        help="serve the owner page on 127.0.0.1 at port N (default: a free port; the address "
        "and a password for this run are printed first)",
    )
    web.add_argument("--no-web", action="store_true", help="do not serve the owner page")
    p.set_defaults(func=cmd_demo)


def _decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--decoder", default="zxing", choices=["zxing", "pyzbar", "opencv"])
    p.set_defaults(func=cmd_decode)


def _bench(p: argparse.ArgumentParser) -> None:
    # Only when `kiosk bench` is the command (the parser is built for the command given).
    from devtools.bench.loop import GRANTS

    p.add_argument("--json", action="store_true", help="print one JSON object with all figures")
    p.add_argument(
        "--frames", type=int, default=168, help="generated frames per resolution (default 168)"
    )
    p.add_argument(
        "--scans",
        type=at_least(1),
        metavar="N",
        help=f"members shown to the door loop for scan-to-relay (default {GRANTS}, every third "
        "with a phone pass); fewer make a quicker run with coarser percentiles",
    )
    p.add_argument(
        "--sync",
        action="store_true",
        help="measure sync instead: backlog drain, snapshot, idle poll, door with a stalled cloud",
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        help="with --sync, --fleet or --console: also measure on this PostgreSQL server "
        "(postgresql://user@host:port/db; a scratch database is created there and dropped)",
    )
    p.add_argument(
        "--members",
        type=at_least(10),
        metavar="N",
        help=f"with --sync: members in the snapshot; with --console: members searched "
        f"(default {BENCH_MEMBERS:,})",
    )
    p.add_argument(
        "--backlog",
        type=at_least(1),
        metavar="N",
        help=f"with --sync: check-ins in the backlog to drain (default {BENCH_BACKLOG:,})",
    )
    p.add_argument(
        "--web",
        action="store_true",
        help="measure the owner page instead: status JSON and live-update latency on loopback "
        "with a full journal against an empty one, and the page process's memory",
    )
    p.add_argument(
        "--checkins",
        type=at_least(1),
        metavar="N",
        help="with --web: check-ins in the full journal (default 100,000)",
    )
    p.add_argument(
        "--fleet",
        action="store_true",
        help="measure the reference cloud instead: how many simulated doors (idle pulls, "
        "heartbeats, a busy gym's check-ins, at the default sync interval) one setup serves "
        "with p99 under 250 ms and no errors, and that every check-in is stored exactly once",
    )
    p.add_argument(
        "--retained-rows",
        type=at_least(0),
        metavar="N",
        help="with --fleet: every door starts with N check-ins already stored in the cloud "
        "(seeded, spread over 90 days), as a door keeping 90 days would (default 0)",
    )
    p.add_argument(
        "--interval",
        type=at_least_seconds(0.1),
        metavar="S",
        help="with --fleet: doors sync every S seconds with the check-in rate scaled to match, "
        "each carrying the load of (sync interval / S) doors, reported as door equivalents "
        "(default: the configured sync interval, 30 s)",
    )
    p.add_argument(
        "--max-doors",
        type=at_least(1),
        metavar="N",
        help="with --fleet: the most doors the search tries (default 12,800)",
    )
    p.add_argument(
        "--saturation",
        action="store_true",
        help="with --fleet: after the search, steps at 1.5x and 2x the capacity found: "
        "check-ins acknowledged a second, good answers a second, 503s (doors back off as "
        "asked), timeouts, other errors",
    )
    p.add_argument(
        "--workers",
        type=at_least(1),
        metavar="N",
        help="with --fleet or --console: the cloud's worker processes on PostgreSQL (default 1 "
        "with --fleet, 2 with --console; SQLite always runs one)",
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="measure the cloud's front-desk console instead: member search p50/p95 over "
        "100,000 members (name, card code, phone) and the live attendance feed with 50 consoles "
        "open while 20 doors upload (delivery latency, exactly once, the cloud's CPU)",
    )
    p.set_defaults(func=cmd_bench)


_COMMANDS = {"demo": _demo, "decode": _decode, "bench": _bench}


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add the command ``name`` of this group (demo, decode, bench) to the ``kiosk`` subcommands
    ``sub``, listed with ``help``."""
    _COMMANDS[name](sub.add_parser(name, help=help))
