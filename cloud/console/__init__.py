"""The staff console: the front desk's web pages in the reference cloud, under ``/console``
(docs/console.md). Server-rendered HTML (Jinja2, autoescaped), one stylesheet and small scripts
from ``/console/static/``, no third-party anything.

- ``auth``: staff users and roles, passwords (scrypt), sessions, CSRF and origin checks, sign-in
  throttling, and the dependencies every route declares (``signed_in``, ``allow``, ...);
- ``audit``: the audit log every change writes in its own transaction;
- ``accounts``: invites, roles, disabling, trainers' members (pages and CLI);
- ``pages``: ``router``, ``render``, the security headers and error pages, and the sign-in,
  invite, staff and audit pages.

``cloud.app.create_app`` serves the routers ``routers()`` returns and calls ``install(app)`` for
the rest. A new part of the console adds its ``APIRouter`` (prefix ``/console``,
``include_in_schema=False``) to that list; its routes are then covered by the route-table tests
(tests/test_console_routes.py) automatically.
"""

from __future__ import annotations

from typing import Any


def routers() -> list[Any]:
    """Every router of the console, served by ``cloud.app.create_app``."""
    from cloud.console import doors, members, pages, today

    return [pages.router, today.router, doors.router, members.router]


def install(app: Any, public_url: str | None = None) -> None:
    """The console's security headers, error pages and this process's sign-in throttle
    (``app.state.console_throttle``) on ``app``; its routes, ``routers()``, come with the others
    (``cloud.app``). ``public_url`` (default ``$FITFLOW_CLOUD_PUBLIC_URL``) is the address
    browsers use, as ``https://cloud.example.com``: needed behind a TLS-terminating proxy, where
    this process sees plain HTTP; ValueError when it is not such an address."""
    import os

    from cloud.console import auth, pages

    app.state.console_origin = auth.public_origin(
        public_url if public_url is not None else os.environ.get(auth.PUBLIC_URL_ENV)
    )
    app.state.console_throttle = auth.LoginThrottle()
    app.add_middleware(pages.ConsoleHeaders)
    pages.install_handlers(app)
