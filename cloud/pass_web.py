"""The member's pass page (docs/passes.md, "The pass page"): the static files of ``pass_page/``
served at ``/pass/``.

The page is a small installable web app: it activates a pass from ``/pass/#activate=<code>``, keeps
the Ed25519 private key non-extractable in the browser's IndexedDB and shows the rotating signed QR
code, offline too (its service worker, ``/pass/sw.js``, caches these files). The page's API is
``/pass/v1/...``, served by ``cloud.api_pass``; nothing here reads the database.

Every answer carries a strict Content-Security-Policy (only this origin's scripts, styles,
images, manifest, worker and fetches; no inline script or style; never framed), ``nosniff``,
``Referrer-Policy: no-referrer`` (the page's links and requests never tell another site where they
came from) and ``Cache-Control: no-store`` for the page and its service worker (the worker, not the
HTTP cache, keeps the offline copy; a new version reaches the phone at its next visit). The files
are read once, at import; a missing one raises at import (FileNotFoundError), never at request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

PREFIX = "/pass/"
PACKAGE_DIR = "pass_page"
# Where the service worker's source says which version of the shell it caches.
SHELL_VERSION_MARK = b"__SHELL_VERSION__"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
# The page itself and its worker: always fetched fresh. The other files may be kept briefly by
# the HTTP cache; the worker fetches them with cache "reload" anyway.
NO_STORE = "no-store"
SHORT_CACHE = "no-cache"

# URL path under /pass/ -> (file in pass_page/, media type, Cache-Control).
FILES: dict[str, tuple[str, str, str]] = {
    "": ("index.html", "text/html; charset=utf-8", NO_STORE),
    "app.js": ("app.js", "text/javascript; charset=utf-8", SHORT_CACHE),
    "qr.js": ("qr.js", "text/javascript; charset=utf-8", SHORT_CACHE),
    "style.css": ("style.css", "text/css; charset=utf-8", SHORT_CACHE),
    "manifest.webmanifest": ("manifest.webmanifest", "application/manifest+json", SHORT_CACHE),
    "icon.svg": ("icon.svg", "image/svg+xml", SHORT_CACHE),
    "sw.js": ("sw.js", "text/javascript; charset=utf-8", NO_STORE),
}


@dataclass(frozen=True, slots=True)
class PageFile:
    body: bytes
    media_type: str
    cache_control: str


def read_file(name: str) -> bytes:
    """One file of ``pass_page/`` as bytes (FileNotFoundError if the package lacks it)."""
    return resources.files("cloud").joinpath(PACKAGE_DIR, name).read_bytes()


def shell_version(bodies: dict[str, bytes]) -> str:
    """A digest of the app shell (every file but the worker itself): 16 hex characters that
    change whenever any file does."""
    digest = hashlib.sha256()
    for name in sorted(bodies):
        digest.update(name.encode() + b"\x00" + hashlib.sha256(bodies[name]).digest())
    return digest.hexdigest()[:16]


def load_files() -> tuple[dict[str, PageFile], str]:
    """The page's files by URL path under /pass/, the worker's version mark filled in, and that
    version. ValueError if the worker lacks its mark."""
    bodies = {path: read_file(name) for path, (name, _, _) in FILES.items()}
    version = shell_version({p: b for p, b in bodies.items() if p != "sw.js"}).encode()
    if SHELL_VERSION_MARK not in bodies["sw.js"]:
        raise ValueError("pass_page/sw.js lacks its version mark")
    bodies["sw.js"] = bodies["sw.js"].replace(SHELL_VERSION_MARK, version)
    files = {
        path: PageFile(bodies[path], media_type, cache)
        for path, (_, media_type, cache) in FILES.items()
    }
    return files, version.decode()


PAGE_FILES, SHELL_VERSION = load_files()

router = APIRouter(include_in_schema=False)


def _answer(page_file: PageFile) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": page_file.cache_control}
    return Response(page_file.body, media_type=page_file.media_type, headers=headers)


def _route(path: str, page_file: PageFile) -> None:
    async def serve() -> Response:
        return _answer(page_file)

    router.add_api_route(PREFIX + path, serve, methods=["GET", "HEAD"])


for _path, _file in PAGE_FILES.items():
    _route(_path, _file)


@router.get("/pass")
async def pass_without_slash() -> Response:
    """``/pass`` is the page at ``/pass/`` (relative links need the slash)."""
    return RedirectResponse(PREFIX, status_code=308, headers=SECURITY_HEADERS)
