"""The cloud-facing commands of the device: ``kiosk enrol`` (once, with a code from the gym's
admin) and ``kiosk sync`` (the sync agent, a systemd unit; ``--once`` for one round).

Imports only argparse-level code at module level: the agent and its HTTP client (httpx) load
when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from kiosk import __version__
from kiosk.cli.common import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_REFUSED,
    EXIT_RUNTIME,
    add_config_option,
    base_clock,
    load_config,
    setup_logging,
)

log = logging.getLogger("kiosk")


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
        config = load_config(args.config)
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
    from kiosk.core.clock import AnchoredClock
    from kiosk.data.control import ControlError, ControlStore, control_path
    from kiosk.data.database import StoreError
    from kiosk.data.store import Store
    from kiosk.door.loop import stop_on_signals
    from kiosk.sync.agent import SyncAgent, sync_settings
    from kiosk.sync.client import CloudClient
    from kiosk.sync.identity import IdentityError, load_identity

    config = load_config(args.config)
    if config is None:
        print("refusing to start the sync agent on an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level)
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
    clock = AnchoredClock(base_clock(args), store.latest_anchor)
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


def _enrol(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud", required=True, metavar="URL", help="the cloud's address (https)")
    p.add_argument("--code", required=True, help="the single-use enrolment code")
    p.add_argument("--name", help="this device's name in the cloud (default: the host name)")
    p.add_argument(
        "--credentials",
        metavar="PATH",
        help="where to write the credentials (default: sync.credentials_file from the config)",
    )
    add_config_option(p, "config file (for sync.credentials_file)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing enrolment of this device"
    )
    p.set_defaults(func=cmd_enrol)


def _sync(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="one round; exit 0 only if it all went")
    add_config_option(p, "config file")
    p.set_defaults(func=cmd_sync)


_COMMANDS = {"enrol": _enrol, "sync": _sync}


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add the command ``name`` of this group (enrol, sync) to the ``kiosk`` subcommands ``sub``,
    listed with ``help``."""
    _COMMANDS[name](sub.add_parser(name, help=help))
