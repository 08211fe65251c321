"""``kiosk web`` (serve the owner page) and ``kiosk web set-password``.

Imports only argparse at module level: ``kiosk`` builds its whole command line from here, and the
web server's modules load when the command runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_RUNTIME, EXIT_CONFIG = 1, 2
# One owner and a monitor need a handful of connections; a LAN client opening hundreds gets 503s
# beyond this instead of the process running out of file descriptors (the unit allows 1024).
LIMIT_CONCURRENCY = 64
# Idle keep-alive connections are closed after this (s): they hold a descriptor each.
KEEP_ALIVE_S = 5


def _load_config(path: str | None):
    from kiosk.config import ConfigError, config_path_from, load_config

    config_path = Path(path) if path else config_path_from(os.environ)
    try:
        return load_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"invalid configuration ({config_path}):\n{exc}", file=sys.stderr)
        return None


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, not {value}")
    return value


def listen_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the owner page until SIGTERM/Ctrl-C (the systemd unit)."""
    import logging

    config = _load_config(args.config)
    if config is None:
        print("refusing to start the owner page on an invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=getattr(logging, config.logging.level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    host = args.host or config.web.host
    port = args.port or config.web.port
    try:
        sock = bind(host, port)
    except OSError as exc:  # the port is taken, a privileged port, an unknown address
        print(f"kiosk web: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    import uvicorn

    from kiosk.web.app import create_app

    app = create_app(config)
    server = uvicorn.Server(server_config(app))
    where = " (every network: reach it from the LAN)" if host in ("0.0.0.0", "::") else ""  # noqa: S104
    print(f"kiosk web: the owner page listens on {listen_url(host, port)}{where}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.page.close()
    return 0 if server.started else EXIT_RUNTIME


def server_config(app):
    """uvicorn's settings for the page: quiet (no access log: it would put client paths and
    addresses in the journal; no Server header), direct clients only (no proxy headers), and
    bounded: at most ``LIMIT_CONCURRENCY`` connections and requests at once, idle keep-alive
    connections closed after ``KEEP_ALIVE_S``."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, bound here so that a taken port is reported
    before the page says where it listens. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


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

    config = _load_config(args.config)
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


def register(sub) -> None:
    """Add ``kiosk web`` and ``kiosk web set-password`` to the ``kiosk`` command line."""
    p = sub.add_parser(
        "web",
        help="serve the owner's page: door state, decisions, sync and device health (systemd unit)",
    )
    p.add_argument(
        "--config", help="config file (default: $KIOSK_CONFIG or /etc/fitflow-kiosk/kiosk.toml)"
    )
    p.add_argument("--host", help="address to listen on (default: web.host, 0.0.0.0)")
    p.add_argument("--port", type=port_number, help="port to listen on (default: web.port, 8080)")
    p.set_defaults(func=cmd_web)
    actions = p.add_subparsers(dest="web_command", metavar="ACTION")
    s = actions.add_parser(
        "set-password",
        help="set the owner page's password (asks twice; signs everyone out)",
    )
    # SUPPRESS: a --config given before "set-password" is not reset by this one's default.
    s.add_argument(
        "--config", default=argparse.SUPPRESS, help="config file (for web.password_file)"
    )
    s.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE ('-': standard input)",
    )
    s.set_defaults(func=cmd_set_password)
