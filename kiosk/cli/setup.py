"""The installer's commands: ``kiosk provision`` (enrolment, owner password, door settings),
``kiosk selftest`` (every part of the door checked), ``kiosk testcard`` (the test QR code) and
``kiosk status`` (the device summarised from its database). The work is in ``kiosk.ops``.

Imports only argparse-level code at module level: ``kiosk.ops`` loads when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kiosk import __version__
from kiosk.cli.common import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_RUNTIME,
    add_config_option,
    config_path,
    load_config,
    setup_logging,
)


def cmd_provision(args: argparse.Namespace) -> int:
    """Enrolment, owner password and door settings; interactive unless --non-interactive."""
    from kiosk.ops.provision import Plan, ProvisionError, provision, read_password_file

    try:
        settings = {
            dotted: value
            for dotted, value in (
                ("door.id", args.door_id),
                ("site.timezone", args.timezone),
                ("gpio.relay_pin", args.relay_pin),
                ("gpio.relay_active_high", args.relay_active_high),
                ("gpio.pulse_ms", args.pulse_ms),
            )
            if value is not None
        }
        password = None
        if args.owner_password_file:
            password = read_password_file(args.owner_password_file)
        plan = Plan(
            settings=settings,
            cloud=args.cloud,
            code=args.code,
            name=args.name,
            re_enrol=args.re_enrol,
            password=password,
        )
        return provision(
            config_path(args.config),
            plan,
            interactive=not args.non_interactive,
            ask=getattr(args, "ask", None) or input,
            ask_secret=getattr(args, "ask_secret", None),
            out=sys.stdout,
            transport=getattr(args, "transport", None),
            software=__version__,
        )
    except ProvisionError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # a flag outside its setting's rules
        print(f"provision: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_selftest(args: argparse.Namespace) -> int:
    """Check every part of the door; exit 1 when any check finds a PROBLEM (2: bad config)."""
    from kiosk.config import ConfigError
    from kiosk.config import load_config as load
    from kiosk.ops.selftest import SelftestEnv, config_problem, failed, render, run_selftest

    setup_logging("WARNING")
    path = config_path(args.config)
    try:
        config = load(path, os.environ)
    except ConfigError as exc:
        results = [config_problem(str(path), exc.errors)]
        code = EXIT_CONFIG
    else:
        env = SelftestEnv(
            transport=getattr(args, "transport", None),
            environ=dict(os.environ),
            camera_seconds=args.camera_seconds,
            relay=not args.no_relay,
            progress=(lambda line: print(line, file=sys.stderr))
            if not args.json
            else print_nothing,
        )
        # A test may set these on the parsed arguments before calling ``args.func``.
        for name in ("clock_synced", "sleep"):
            if getattr(args, name, None) is not None:
                setattr(env, name, getattr(args, name))
        results = run_selftest(config, env)
        code = EXIT_RUNTIME if failed(results) else 0
    if args.json:
        print(json.dumps({"ok": code == 0, "checks": [r.to_json() for r in results]}, indent=2))
    else:
        render(results, sys.stdout)
    return code


def print_nothing(_line: str) -> None:
    return None


def cmd_testcard(args: argparse.Namespace) -> int:
    """Write the test card as a PNG and draw it in the terminal."""
    from kiosk.ops.testcard import TestCardError, terminal_art, write_png

    try:
        if args.out:
            write_png(Path(args.out), args.code)
        art = terminal_art(args.code, ansi=not args.plain and sys.stdout.isatty())
    except TestCardError as exc:
        print(f"testcard: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    sys.stdout.write(art)
    print(f"test card: {args.code} (the door answers unknown_code: it never opens for it)")
    if args.out:
        print(f"written to {args.out}; print it at 100% (no fit-to-page), about 4 cm wide")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Summarise the running device from its database, read-only; exit 3 if it is unusable."""
    from kiosk.core.clock import SystemClock
    from kiosk.ops.status import StoreError, collect_status, render_status

    config = load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        status = collect_status(
            Path(config.store.path),
            door_id=config.door.id,
            software_version=__version__,
            clock_quality=SystemClock().quality().value,
        )
    except StoreError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        render_status(status, sys.stdout)
    return 0


def _provision(p: argparse.ArgumentParser) -> None:
    add_config_option(p, "config file to edit (default: $KIOSK_CONFIG or /etc/...)")
    p.add_argument("--non-interactive", action="store_true", help="ask nothing: use the flags only")
    p.add_argument("--cloud", metavar="URL", help="the cloud's address (https)")
    p.add_argument("--code", help="the single-use enrolment code from the admin page")
    p.add_argument("--name", help="this device's name in the cloud (default: the host name)")
    p.add_argument(
        "--re-enrol",
        action="store_true",
        help="enrol again even if enrolled (a new device identity; the old one stays until "
        "revoked)",
    )
    p.add_argument(
        "--owner-password-file",
        metavar="FILE",
        help="read the owner page's password from the first line of FILE ('-': stdin)",
    )
    p.add_argument("--door-id", help="door.id")
    p.add_argument("--timezone", help="site.timezone, e.g. Europe/Berlin (default: the cloud's)")
    p.add_argument("--relay-pin", type=int, metavar="BCM", help="gpio.relay_pin (BCM number)")
    level = p.add_mutually_exclusive_group()
    level.add_argument(
        "--relay-active-high",
        dest="relay_active_high",
        action="store_const",
        const=True,
        help="a high output closes the relay",
    )
    level.add_argument(
        "--relay-active-low",
        dest="relay_active_high",
        action="store_const",
        const=False,
        help="a low output closes the relay",
    )
    p.add_argument("--pulse-ms", type=int, metavar="MS", help="gpio.pulse_ms")
    p.set_defaults(func=cmd_provision)


def _selftest(p: argparse.ArgumentParser) -> None:
    add_config_option(p, "config file")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument(
        "--camera-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="how long to look for frames and the test card (default 10)",
    )
    p.add_argument(
        "--no-relay",
        action="store_true",
        help="do not click the relay (it releases the turnstile for 0.1 s)",
    )
    p.set_defaults(func=cmd_selftest)


def _testcard(p: argparse.ArgumentParser) -> None:
    # The default code is part of the help; kiosk.ops.testcard (and the credential parser it
    # needs) loads only when this command is built.
    from kiosk.ops.testcard import TEST_CODE

    p.add_argument("--code", default=TEST_CODE, help=f"the code (default {TEST_CODE})")
    p.add_argument("--out", metavar="PNG", help="write a printable PNG here")
    p.add_argument("--plain", action="store_true", help="no ANSI colours (light-on-dark terminals)")
    p.set_defaults(func=cmd_testcard)


def _status(p: argparse.ArgumentParser) -> None:
    add_config_option(p, "config file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)


_COMMANDS = {
    "provision": _provision,
    "selftest": _selftest,
    "testcard": _testcard,
    "status": _status,
}


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add the command ``name`` of this group (provision, selftest, testcard, status) to the
    ``kiosk`` subcommands ``sub``, listed with ``help``."""
    _COMMANDS[name](sub.add_parser(name, help=help))
