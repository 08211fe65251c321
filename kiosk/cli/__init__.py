"""The ``kiosk`` command. Each subcommand is a thin shell over the modules that do the work.

Exit codes: 0 success; 1 a runtime failure (camera, GPIO, the cloud unreachable or refusing an
enrolment, a sync round that did not complete); 2 invalid configuration or usage (including a
missing or unsafe credentials file); 3 the database cannot be used (damaged, newer schema, disk
full); 4 the cloud refused this device for good (token revoked: re-enrol; or it does not speak this
protocol version: update), so restarting ``kiosk sync`` is pointless.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path

from kiosk import __version__

EXIT_RUNTIME, EXIT_CONFIG, EXIT_DATABASE, EXIT_REFUSED = 1, 2, 3, 4

log = logging.getLogger("kiosk")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load_config(path: str | None):
    """Load and validate the config, or print every error and return None."""
    from kiosk.config import ConfigError, config_path_from, load_config

    config_path = Path(path) if path else config_path_from(os.environ)
    try:
        return load_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"invalid configuration ({config_path}):\n{exc}", file=sys.stderr)
        return None


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load_config(args.path)
    if config is None:
        return EXIT_CONFIG
    from kiosk.config import config_path_from

    print(f"{args.path or config_path_from(os.environ)}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import json

    from kiosk.config import as_dict

    config = _load_config(args.path)
    if config is None:
        return EXIT_CONFIG
    print(json.dumps(as_dict(config), indent=2))
    return 0


def cmd_config_example(_args: argparse.Namespace) -> int:
    from kiosk.config import render_example

    sys.stdout.write(render_example())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hardware.protocols import CameraError, DecoderUnavailable
    from kiosk.core.clock import AnchoredClock, SystemClock
    from kiosk.data.control import ControlError, control_path
    from kiosk.data.store import Store, StoreError
    from kiosk.door.loop import CONTROL_REOPEN_S, DoorLoop, open_control_store, stop_on_signals
    from kiosk.door.parts import (
        GpioError,
        build_camera,
        build_door,
        build_reader,
        build_signal,
        make_pin_factory,
        scanner_settings,
    )
    from kiosk.door.systemd import Notifier

    config = _load_config(args.config)
    if config is None:
        print("refusing to start the door on an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config.logging.level)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        store = Store.open(Path(config.store.path))
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_DATABASE
    # Until NTP syncs, the time comes from the sync agent's newest anchor of this boot.
    clock = AnchoredClock(SystemClock(), store.latest_anchor)
    # The owner page's control file: the door runs without it, only the page's extras are lost
    # (the loop tries again every CONTROL_REOPEN_S, and reopens a file that broke).
    control_file = control_path(config.store.path)
    control = None
    try:
        control = open_control_store(control_file)
    except ControlError as exc:
        log.warning(
            "owner-page 'test the door' and live health will not work until the control file "
            "opens (tried again every %.0f s): %s",
            CONTROL_REOPEN_S,
            exc,
        )
    opened: list = []  # closed in reverse order on every exit path; the relay last of all
    loop: DoorLoop | None = None
    try:
        # Synced rows past their retention go; pending rows are never deleted (store guarantees).
        retention = timedelta(days=config.store.checkin_retention_days)
        if pruned := store.prune_synced(clock.wall() - retention):
            log.info("pruned %d synced check-ins older than %s", pruned, retention)
        pins = make_pin_factory(config.gpio.pin_factory)
        door = build_door(config.gpio, pins.factory)
        opened.append(door)
        signal = build_signal(config.gpio, config.feedback, pins.factory)
        opened.append(signal)
        reader = build_reader(config.decoder)
        camera = build_camera(config.camera, clock)
        opened.append(camera)
        log.info(
            "door %s: camera %s, decoder %s, pins %s, relay on GPIO%d",
            config.door.id,
            config.camera.backend,
            reader.name,
            pins.describe(),
            config.gpio.relay_pin,
        )
        loop = DoorLoop(
            source=camera,
            reader=reader,
            store=store,
            door=door,
            signal=signal,
            clock=clock,
            settings=scanner_settings(config),
            notifier=Notifier(),
            control=control,
            open_control=lambda: open_control_store(control_file),
        )
        loop.run(stop)
        return 0
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_DATABASE
    except (CameraError, GpioError, DecoderUnavailable) as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    finally:
        for part in reversed(opened):
            try:
                part.close()
            except Exception:
                # One part failing to close must not keep the others (the relay last) open.
                log.exception("closing %s failed", type(part).__name__)
        if control is not None:
            control.close()
        if loop is not None and loop.control is not None:
            loop.control.close()  # the loop may have opened it again (closing twice is harmless)
        store.close()


def cmd_enrol(args: argparse.Namespace) -> int:
    """Enrol this device with the cloud once, with a single-use code from the gym's admin, and
    write its credentials file (mode 0600)."""
    import socket

    from kiosk.sync.client import CloudClient, CloudError, check_cloud_url
    from kiosk.sync.identity import DeviceIdentity, IdentityError, save_identity

    config = None
    if args.credentials:
        path = Path(args.credentials)
    else:
        config = _load_config(args.config)
        if config is None:
            return EXIT_CONFIG
        path = Path(config.sync.credentials_file)
    if path.exists() and not args.force:
        print(
            f"enrol: {path} already holds this device's credentials. Enrolling again gives the "
            f"device a new identity in the cloud (the old one stays until revoked); add --force "
            f"to do that.",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        url = check_cloud_url(args.cloud)
    except ValueError as exc:
        print(f"enrol: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    name = args.name or socket.gethostname()[:200] or "kiosk"
    timeout_s = config.sync.request_timeout_s if config is not None else 10.0
    try:
        with CloudClient(
            url,
            None,
            transport=getattr(args, "transport", None),
            timeout_s=timeout_s,
            software_version=__version__,
        ) as client:
            enrolment = client.enrol(args.code.strip(), name, __version__)
    except CloudError as exc:
        print(f"enrol: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    identity = DeviceIdentity.from_enrolment(url, enrolment)
    try:
        save_identity(path, identity, overwrite=args.force)
    except IdentityError as exc:
        print(f"enrol: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"enrolled as device {identity.device_id} of {identity.gym_name} (gym {identity.gym_id},"
        f" time zone {identity.timezone}); credentials written to {path}"
    )
    if config is not None and config.site.timezone != identity.timezone:
        print(
            f"note: the cloud says the gym's time zone is {identity.timezone}, the configuration "
            f'says {config.site.timezone}; set site.timezone = "{identity.timezone}" in the '
            f"configuration file"
        )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Run the sync agent (the systemd unit), or one round with --once."""
    from kiosk.core.clock import AnchoredClock, SystemClock
    from kiosk.data.control import ControlError, ControlStore, control_path
    from kiosk.data.store import Store, StoreError
    from kiosk.door.loop import stop_on_signals
    from kiosk.sync.agent import SyncAgent, sync_settings
    from kiosk.sync.client import CloudClient
    from kiosk.sync.identity import IdentityError, load_identity

    config = _load_config(args.config)
    if config is None:
        print("refusing to start the sync agent on an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config.logging.level)
    try:
        identity = load_identity(Path(config.sync.credentials_file), os.environ)
    except IdentityError as exc:
        print(f"sync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if identity.timezone != config.site.timezone:
        log.warning(
            "the cloud says the gym's time zone is %s, the configuration says %s (site.timezone)",
            identity.timezone,
            config.site.timezone,
        )
    try:
        store = Store.open(Path(config.store.path))
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_DATABASE
    stop = threading.Event()
    if not args.once:
        stop_on_signals(stop)
    clock = AnchoredClock(SystemClock(), store.latest_anchor)
    # The owner page's control file ("sync now"): the sync runs without it.
    control = None
    try:
        control = ControlStore.open(control_path(config.store.path))
    except ControlError as exc:
        log.warning("owner-page 'sync now' will not work: %s", exc)
    try:
        with CloudClient(
            identity.cloud_url,
            identity.token,
            transport=getattr(args, "transport", None),
            timeout_s=config.sync.request_timeout_s,
            clock=clock,
            software_version=__version__,
        ) as client:
            agent = SyncAgent(
                store, client, sync_settings(config), clock, sleep=stop.wait, control=control
            )
            log.info(
                "syncing device %s of %s with %s",
                identity.device_id,
                identity.gym_name,
                identity.cloud_url,
            )
            report = agent.cycle() if args.once else agent.run(stop)
    finally:
        if control is not None:
            control.close()
        store.close()
    if report.fatal:
        print(f"sync stopped: {report.error}", file=sys.stderr)
        return EXIT_REFUSED
    if args.once:
        if not report.ok:
            print(f"sync incomplete: {report.error}", file=sys.stderr)
            return EXIT_RUNTIME
        print(
            f"sync ok: {report.pushed} check-ins uploaded, {report.rejected} rejected; "
            f"replica {report.pull}"
        )
    return 0


def cmd_relay_off(args: argparse.Namespace) -> int:
    """For systemd's ExecStopPost: force the relay output to its inactive level, even after a kill."""
    from kiosk.door.parts import GpioError, force_relay_off

    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        force_relay_off(config.gpio)
    except GpioError as exc:
        print(f"relay-off: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"relay on GPIO{config.gpio.relay_pin} forced off")
    return 0


def _config_path(path: str | None) -> Path:
    from kiosk.config import config_path_from

    return Path(path) if path else config_path_from(os.environ)


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
            _config_path(args.config),
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
    import json

    from kiosk.config import ConfigError, load_config
    from kiosk.ops.selftest import SelftestEnv, config_problem, failed, render, run_selftest

    _setup_logging("WARNING")
    path = _config_path(args.config)
    try:
        config = load_config(path, os.environ)
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
        for name in ("clock_synced", "sleep"):  # tests inject these through main()
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
    import json

    from kiosk.core.clock import SystemClock
    from kiosk.ops.status import StoreError, collect_status, render_status

    config = _load_config(args.config)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from cloud.embedded import EmbeddedCloudError
    from devtools.demo import DemoError, DemoWebError, run_demo
    from kiosk.data.store import StoreError
    from kiosk.sync.client import CloudError

    # Decisions go to stdout; logs to stderr, quiet unless something is wrong.
    _setup_logging("WARNING")
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
    except (EmbeddedCloudError, CloudError) as exc:
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
    from kiosk.door.reader import QrReader, make_decoder

    reader = QrReader(make_decoder(args.decoder), motion_gate=False, retry_on_miss=True)
    return decode_files(args.images, reader, sys.stdout, sys.stderr)


BENCH_MEMBERS, BENCH_BACKLOG = 100_000, 10_000


def cmd_bench(args: argparse.Namespace) -> int:
    _setup_logging("WARNING")
    if args.sync and args.web:
        print("bench: choose one of --sync and --web", file=sys.stderr)
        return EXIT_CONFIG
    if args.checkins is not None and not args.web:
        print("bench: --checkins only applies with --web", file=sys.stderr)
        return EXIT_CONFIG
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
            print(f"bench: {', '.join(given)} only apply with --sync", file=sys.stderr)
            return EXIT_CONFIG
        from devtools.bench.run import run_bench

        return run_bench(as_json=args.json, frames_per_size=args.frames, out=sys.stdout)
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


def _at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected at least {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiosk", description="FitFlow Kiosk: the gym door's QR check-in appliance."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the door: camera, decoder, journal, relay (systemd unit)")
    p.add_argument(
        "--config", help="config file (default: $KIOSK_CONFIG or /etc/fitflow-kiosk/kiosk.toml)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="the door on simulated camera and pins, synced with an embedded cloud of demo members",
    )
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
    from kiosk.web.commands import port_number  # light: argparse only

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

    p = sub.add_parser(
        "decode", help="decode QR codes in image files: prints path<TAB>payload or path<TAB>-"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--decoder", default="zxing", choices=["zxing", "pyzbar", "opencv"])
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "bench",
        help="measure decoders, scan-to-relay latency, idle cost and memory; with --sync, the "
        "sync agent against the reference cloud; with --web, the owner page",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with all figures")
    p.add_argument(
        "--frames", type=int, default=168, help="generated frames per resolution (default 168)"
    )
    p.add_argument(
        "--sync",
        action="store_true",
        help="measure sync instead: backlog drain, snapshot, idle poll, door with a stalled cloud",
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        help="with --sync: also measure on this PostgreSQL server (postgresql://user@host:port/db;"
        " a scratch database is created there and dropped)",
    )
    p.add_argument(
        "--members",
        type=_at_least(10),
        metavar="N",
        help=f"with --sync: members in the snapshot (default {BENCH_MEMBERS:,})",
    )
    p.add_argument(
        "--backlog",
        type=_at_least(1),
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
        type=_at_least(1),
        metavar="N",
        help="with --web: check-ins in the full journal (default 100,000)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "enrol", help="enrol this device with the cloud (once, with a code from the admin page)"
    )
    p.add_argument("--cloud", required=True, metavar="URL", help="the cloud's address (https)")
    p.add_argument("--code", required=True, help="the single-use enrolment code")
    p.add_argument("--name", help="this device's name in the cloud (default: the host name)")
    p.add_argument(
        "--credentials",
        metavar="PATH",
        help="where to write the credentials (default: sync.credentials_file from the config)",
    )
    p.add_argument("--config", help="config file (for sync.credentials_file)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing enrolment of this device"
    )
    p.set_defaults(func=cmd_enrol)

    p = sub.add_parser(
        "sync", help="run the sync agent: upload check-ins, pull the replica (systemd unit)"
    )
    p.add_argument("--once", action="store_true", help="one round; exit 0 only if it all went")
    p.add_argument("--config", help="config file")
    p.set_defaults(func=cmd_sync)

    # The reference cloud service; its module imports FastAPI only inside the commands.
    from cloud.cli import register as register_cloud

    register_cloud(sub)

    p = sub.add_parser("relay-off", help="force the relay output off (systemd ExecStopPost)")
    p.add_argument("--config", help="config file")
    p.set_defaults(func=cmd_relay_off)

    _add_installer_commands(sub)
    from kiosk.cli.db import register as register_db

    register_db(sub)  # kiosk db backup|restore|check, kiosk logs
    from kiosk.web.commands import register as register_web

    register_web(sub)  # kiosk web, kiosk web set-password (the owner page)

    cfg = sub.add_parser("config", help="check, show or print an example configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = cfg_sub.add_parser(
        "check", help="validate a config file; lists every error; exit 2 if invalid"
    )
    p.add_argument(
        "path",
        nargs="?",
        help="config file (default: $KIOSK_CONFIG or /etc/fitflow-kiosk/kiosk.toml)",
    )
    p.set_defaults(func=cmd_config_check)
    p = cfg_sub.add_parser(
        "show", help="print the effective configuration (file + environment) as JSON"
    )
    p.add_argument("path", nargs="?")
    p.set_defaults(func=cmd_config_show)
    p = cfg_sub.add_parser("example", help="print the documented example configuration")
    p.set_defaults(func=cmd_config_example)
    return parser


def _add_installer_commands(sub) -> None:
    """provision, selftest, testcard, status: the installer's commands (issue 5)."""
    p = sub.add_parser(
        "provision",
        help="make this kiosk the gym's door: enrolment, owner password, door settings "
        "(interactive; safe to re-run)",
    )
    p.add_argument("--config", help="config file to edit (default: $KIOSK_CONFIG or /etc/...)")
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

    p = sub.add_parser(
        "selftest",
        help="check config, database, disk, clock, cloud, camera, test card, relay, LEDs and "
        "buzzer; exit 1 on any PROBLEM",
    )
    p.add_argument("--config", help="config file")
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

    from kiosk.ops.testcard import TEST_CODE

    p = sub.add_parser(
        "testcard", help="print the test QR code in the terminal and optionally write it as PNG"
    )
    p.add_argument("--code", default=TEST_CODE, help=f"the code (default {TEST_CODE})")
    p.add_argument("--out", metavar="PNG", help="write a printable PNG here")
    p.add_argument("--plain", action="store_true", help="no ANSI colours (light-on-dark terminals)")
    p.set_defaults(func=cmd_testcard)

    p = sub.add_parser(
        "status", help="summarise the device from its database (read-only); exit 3 if unusable"
    )
    p.add_argument("--config", help="config file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)


def main(argv: list[str] | None = None, *, transport=None) -> int:
    """Run one command. ``transport`` (an ``httpx`` transport) replaces the network for the
    commands that talk to the cloud; tests pass an ``httpx.MockTransport``."""
    args = build_parser().parse_args(argv)
    args.transport = transport
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
