"""How the owner page is served: the listening socket, uvicorn's bounded and quiet settings, and
the address people are told. Used by ``kiosk web`` and by the demo, which serves the same page.
"""

from __future__ import annotations

import socket

# One owner and a monitor need a handful of connections; a LAN client opening hundreds gets 503s
# beyond this instead of the process running out of file descriptors (the unit allows 1024).
LIMIT_CONCURRENCY = 64
# Idle keep-alive connections are closed after this (s): they hold a descriptor each.
KEEP_ALIVE_S = 5


def listen_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


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
