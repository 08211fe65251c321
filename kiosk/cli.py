"""The ``kiosk`` command. Each subcommand is a thin shell over the modules that do the work.

Exit codes: 0 success; 1 a runtime failure (camera, GPIO); 2 invalid configuration or usage;
3 the database cannot be used (damaged, newer schema, disk full).
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

EXIT_RUNTIME, EXIT_CONFIG, EXIT_DATABASE = 1, 2, 3

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
    from kiosk.clock import SystemClock
    from kiosk.parts import (
        GpioError,
        build_camera,
        build_door,
        build_reader,
        build_signal,
        make_pin_factory,
        scanner_settings,
    )
    from kiosk.scanner import DoorLoop, stop_on_signals
    from kiosk.store import Store, StoreError
    from kiosk.systemd import Notifier

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
    clock = SystemClock()
    opened: list = []  # closed in reverse order on every exit path; the relay last of all
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
        store.close()


def cmd_relay_off(args: argparse.Namespace) -> int:
    """For systemd's ExecStopPost: force the relay output to its inactive level, even after a kill."""
    from kiosk.parts import GpioError, force_relay_off

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


def cmd_demo(args: argparse.Namespace) -> int:
    from kiosk.demo import DemoError, run_demo
    from kiosk.store import StoreError

    # Decisions go to stdout; logs to stderr, quiet unless something is wrong.
    _setup_logging("WARNING")
    try:
        return run_demo(
            db=Path(args.db) if args.db else None, as_json=args.json, once=args.once, out=sys.stdout
        )
    except StoreError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from hardware.reader import QrReader, make_decoder
    from kiosk.decodefiles import decode_files

    reader = QrReader(make_decoder(args.decoder), motion_gate=False, retry_on_miss=True)
    return decode_files(args.images, reader, sys.stdout, sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    from kiosk.bench import run_bench

    _setup_logging("WARNING")
    return run_bench(as_json=args.json, frames_per_size=args.frames, out=sys.stdout)


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

    p = sub.add_parser("demo", help="the door on simulated camera and pins with demo members")
    p.add_argument(
        "--db",
        help="use this database (seeded with demo members if empty); default: a temporary one",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object per decision, after its commit"
    )
    p.add_argument(
        "--once", action="store_true", help="play the scenario once (simulated clock) and exit"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "decode", help="decode QR codes in image files: prints path<TAB>payload or path<TAB>-"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--decoder", default="zxing", choices=["zxing", "pyzbar", "opencv"])
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "bench", help="measure decoders, scan-to-relay latency, idle cost and memory"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with all figures")
    p.add_argument(
        "--frames", type=int, default=168, help="generated frames per resolution (default 168)"
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("relay-off", help="force the relay output off (systemd ExecStopPost)")
    p.add_argument("--config", help="config file")
    p.set_defaults(func=cmd_relay_off)

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
