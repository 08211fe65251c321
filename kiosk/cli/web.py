"""``kiosk web`` (serve the owner page) and ``kiosk web set-password``.

Imports only the standard library and ``kiosk.cli.common`` at module level: the page's
application, its server settings (uvicorn) and the password tools load when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from kiosk.cli.common import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    add_config_option,
    load_config,
    port_number,
    setup_logging,
)


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add ``web`` (and its action ``set-password``) to the ``kiosk`` subcommands ``sub``."""
    if name != "web":
        raise ValueError(f"the web group has no command {name!r}")
    p = sub.add_parser(name, help=help)
    add_config_option(p)
    p.add_argument("--host", help="address to listen on (default: web.host, 0.0.0.0)")
    p.add_argument("--port", type=port_number, help="port to listen on (default: web.port, 8080)")
    p.set_defaults(func=cmd_web)
    actions = p.add_subparsers(dest="web_command", metavar="ACTION")
    s = actions.add_parser(
        "set-password",
        help="set the owner page's password (asks twice; signs everyone out)",
    )
    add_config_option(s, "config file (for web.password_file)", keep_outer=True)
    s.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE ('-': standard input)",
    )
    s.set_defaults(func=cmd_set_password)


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the owner page until SIGTERM/Ctrl-C (the systemd unit)."""
    config = load_config(args.config)
    if config is None:
        print("refusing to start the owner page on an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level)
    host = args.host or config.web.host
    port = args.port or config.web.port
    import uvicorn

    from kiosk.web.app import create_app
    from kiosk.web.serve import UvicornMismatch, bind, listen_url, server_config

    try:
        sock = bind(host, port)
    except OSError as exc:  # the port is taken, a privileged port, an unknown address
        print(f"kiosk web: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    app = create_app(config)
    try:
        settings = server_config(app)
    except UvicornMismatch as exc:
        sock.close()
        app.state.page.close()
        print(f"kiosk web: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    server = uvicorn.Server(settings)
    where = " (every network: reach it from the LAN)" if host in ("0.0.0.0", "::") else ""  # noqa: S104
    print(f"kiosk web: the owner page listens on {listen_url(host, port)}{where}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.page.close()
    return 0 if server.started else EXIT_RUNTIME


def ask_new_password(ask: Callable[[str], str], out) -> str | None:
    """Ask twice (hidden input); None after three failed tries. Says why a password is refused
    without quoting it."""
    from kiosk.ops.owner_password import PasswordError, check_password

    for _ in range(3):
        first = ask("New owner password: ")
        try:
            check_password(first)
        except PasswordError as exc:
            print(f"  {exc}; again", file=out)
            continue
        if ask("The same password again: ") != first:
            print("  the two passwords differ; again", file=out)
            continue
        return first
    return None


def cmd_set_password(args: argparse.Namespace) -> int:
    """Set the owner page's password: a salted scrypt hash in ``web.password_file`` (0600)."""
    from kiosk.ops.owner_password import PasswordError, hash_password
    from kiosk.ops.provision import ProvisionError, read_password_file, write_secret_file

    config = load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    path = Path(config.web.password_file)
    try:
        if args.password_file:
            password = read_password_file(args.password_file)
        else:
            ask = getattr(args, "ask_secret", None)
            if ask is None:
                import getpass

                ask = getpass.getpass
            password = ask_new_password(ask, sys.stderr)
            if password is None:
                print("set-password: no usable password; nothing was changed", file=sys.stderr)
                return EXIT_CONFIG
        encoded = hash_password(password)
        write_secret_file(path, (encoded + "\n").encode("ascii"))
    except ProvisionError as exc:
        print(f"set-password: {exc}", file=sys.stderr)
        return exc.exit_code
    except PasswordError as exc:
        print(f"set-password: {exc}; nothing was changed", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(
            f"set-password: cannot write {path}: {exc.strerror or exc} (run it with sudo?); "
            f"nothing was changed",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    print(
        f"owner password set: a salted hash in {path} (mode 0600). Anyone signed in to the "
        f"owner page is now signed out."
    )
    return 0
