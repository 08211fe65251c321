"""The door's commands: ``kiosk run`` (the door itself, a systemd unit), ``kiosk relay-off`` (its
ExecStopPost) and ``kiosk config check|show|example``.

Imports only argparse-level code at module level: the door's modules load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from kiosk.cli.common import (
    CONFIG_HELP,
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_RUNTIME,
    add_config_option,
    base_clock,
    config_path,
    load_config,
    setup_logging,
)

if TYPE_CHECKING:
    from kiosk.core.clock import Clock
    from kiosk.data.store import Store

log = logging.getLogger("kiosk")


def prune_synced_at_start(store: Store, clock: Clock, retention: timedelta) -> int | None:
    """Delete the synced check-ins older than ``retention`` by ``clock``; returns how many went,
    or None when the clock is not trusted (UNSYNCED: no NTP and no cloud anchor of this boot),
    which is logged: a clock that runs months ahead would take recent rows for old ones. This is
    the sync agent's rule too (it prunes only on a trusted clock, and does once the clock is).
    Pending and rejected rows are never deleted (``Store.prune_synced``). Raises StoreError."""
    from kiosk.core.model import ClockQuality

    quality = clock.quality()
    if quality is ClockQuality.UNSYNCED:
        log.info(
            "synced check-ins not pruned at start-up: the clock is not trusted yet (%s); the sync "
            "agent prunes them once it is",
            quality.value,
        )
        return None
    pruned = store.prune_synced(clock.wall() - retention)
    if pruned:
        log.info("pruned %d synced check-ins older than %s", pruned, retention)
    return pruned


def cmd_run(args: argparse.Namespace) -> int:
    from hardware.protocols import CameraError, DecoderUnavailable
    from kiosk.core.clock import AnchoredClock
    from kiosk.data.control import ControlError, control_path
    from kiosk.data.database import StoreError
    from kiosk.data.store import Store
    from kiosk.door.loop import CONTROL_REOPEN_S, DoorLoop, open_control_store, stop_on_signals
    from kiosk.door.parts import (
        GpioError,
        build_camera,
        build_door,
        build_passage_sensor,
        build_reader,
        build_signal,
        make_pin_factory,
        scanner_settings,
    )
    from kiosk.door.systemd import Notifier

    config = load_config(args.config)
    if config is None:
        print("refusing to start the door on an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        store = Store.open(Path(config.store.path))
    except StoreError as exc:
        log.error("%s", exc)
        return EXIT_DATABASE
    # Until NTP syncs, the time comes from the sync agent's newest anchor of this boot.
    clock = AnchoredClock(base_clock(args), store.latest_anchor)
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
        prune_synced_at_start(store, clock, timedelta(days=config.store.checkin_retention_days))
        pins = make_pin_factory(config.gpio.pin_factory)
        door = build_door(config.gpio, pins.factory)
        opened.append(door)
        signal = build_signal(config.gpio, config.feedback, pins.factory)
        opened.append(signal)
        passage = build_passage_sensor(config.gpio, pins.factory, clock)
        if passage is not None:
            opened.append(passage)
            log.info(
                "turnstile passage inputs: entry %s, exit %s (grants annulled after %.1f s)",
                config.gpio.passage_entry_pin or "not wired",
                config.gpio.passage_exit_pin or "not wired",
                config.door.passage_timeout_s,
            )
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
            passage=passage,
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


def cmd_relay_off(args: argparse.Namespace) -> int:
    """For systemd's ExecStopPost: force the relay output to its inactive level, even after a kill."""
    from kiosk.door.parts import GpioError, force_relay_off

    config = load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        force_relay_off(config.gpio)
    except GpioError as exc:
        print(f"relay-off: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"relay on GPIO{config.gpio.relay_pin} forced off")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.path)
    if config is None:
        where = config_path(args.path)
        try:
            unreadable = where.exists() and not os.access(where, os.R_OK)
        except OSError:  # a folder this user may not enter
            unreadable = True
        if unreadable:
            # The installer makes the config readable by everyone (it holds no secrets); a file
            # that is not was made so by hand, or by an older installer.
            print(
                f"{where} is not readable by this user: check it with `sudo kiosk config check`, "
                f"or run the installer again, which makes the config readable (mode 0644)",
                file=sys.stderr,
            )
        return EXIT_CONFIG
    print(f"{args.path or config_path(None)}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from kiosk.config import as_dict

    config = load_config(args.path)
    if config is None:
        return EXIT_CONFIG
    print(json.dumps(as_dict(config), indent=2))
    return 0


def cmd_config_example(_args: argparse.Namespace) -> int:
    from kiosk.config import render_example

    sys.stdout.write(render_example())
    return 0


def _run(p: argparse.ArgumentParser) -> None:
    add_config_option(p)
    p.set_defaults(func=cmd_run)


def _relay_off(p: argparse.ArgumentParser) -> None:
    add_config_option(p, "config file")
    p.set_defaults(func=cmd_relay_off)


def _config(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = actions.add_parser(
        "check", help="validate a config file; lists every error; exit 2 if invalid"
    )
    # A positional, not --config: `kiosk config check FILE` reads as a sentence.
    s.add_argument("path", nargs="?", help=CONFIG_HELP)
    s.set_defaults(func=cmd_config_check)
    s = actions.add_parser(
        "show", help="print the effective configuration (file + environment) as JSON"
    )
    s.add_argument("path", nargs="?")
    s.set_defaults(func=cmd_config_show)
    s = actions.add_parser("example", help="print the documented example configuration")
    s.set_defaults(func=cmd_config_example)


_COMMANDS = {"run": _run, "relay-off": _relay_off, "config": _config}


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add the command ``name`` of this group (run, relay-off, config) to the ``kiosk``
    subcommands ``sub``, listed with ``help``."""
    _COMMANDS[name](sub.add_parser(name, help=help))
