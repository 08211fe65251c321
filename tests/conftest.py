"""Shared pytest setup: the Hypothesis profile, a clean KIOSK_* environment, a browser for the
browser tests, and the order of the test files (longest first, so parallel workers finish
together).

``./dev test`` runs the suite on pytest-xdist workers, one test file per work unit (``--dist
loadfile``: a file's module fixtures are set up once, on one worker), handed out in collection
order to whichever worker is free. A long file handed out last would keep one worker busy while
the others idle, so the files are collected longest first: by the seconds each took in this
checkout's previous run (kept in pytest's cache, ``.pytest_cache``), and, for a file never timed
(a fresh clone, as in CI), files with a ``slow`` test first. Tests within a file keep their order.
The order only changes when the suite finishes, never what runs.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timing assertion; on a shared, noisy CI machine it fails
# for reasons unrelated to behaviour. Speed is measured by `kiosk bench`, never by tests.
settings.register_profile("kiosk", deadline=None)
settings.load_profile("kiosk")

# Seconds each test file took (setup, call and teardown of its tests), by path from the rootdir.
_CACHE_KEY = "fitflow/file-seconds"
# The controller hands its reading of the cache to every worker, so that all of them collect the
# files in the same order (xdist refuses to run when two workers' collections differ), even if
# another test run in this checkout rewrites the cache meanwhile.
_WORKER_INPUT_KEY = "fitflow_file_seconds"
# A file with a ``slow`` test that was never timed counts as this long: ahead of the others.
_UNTIMED_SLOW_S = 60.0

_seconds_this_run: defaultdict[str, float] = defaultdict(float)


def _is_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def _recorded_seconds(config: pytest.Config) -> dict[str, float]:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return dict(workerinput.get(_WORKER_INPUT_KEY, {}))
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    recorded = cache.get(_CACHE_KEY, {}) if cache is not None else {}
    return recorded if isinstance(recorded, dict) else {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """(pytest-xdist, on the controller) What every worker orders its collection by."""
    node.workerinput[_WORKER_INPUT_KEY] = _recorded_seconds(node.config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = _recorded_seconds(config)
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)

    def expected_s(path: str) -> float:
        if path in seconds:
            return float(seconds[path])
        has_slow = any(item.get_closest_marker("slow") for item in by_file[path])
        return _UNTIMED_SLOW_S if has_slow else 0.0

    # sorted() is stable: files with equal expectations keep their collection order.
    items[:] = [
        item for path in sorted(by_file, key=expected_s, reverse=True) for item in by_file[path]
    ]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # On the controller (or a run without workers): every report arrives here, workers' included.
    if not _is_worker():
        _seconds_this_run[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if _is_worker() or cache is None or not _seconds_this_run:
        return
    recorded = _recorded_seconds(session.config)
    recorded.update({path: round(s, 2) for path, s in _seconds_this_run.items()})
    cache.set(_CACHE_KEY, recorded)


@pytest.fixture(autouse=True)
def _no_kiosk_overrides(monkeypatch):
    """In-process tests never see the developer's KIOSK_* overrides either."""
    for name in [k for k in os.environ if k.startswith("KIOSK_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (``webrig.launch_chromium``) for one test file's browser
    tests; each test opens its own context or page in it, so cookies and storage never pass
    between tests. Never longer than a file: while Playwright's sync API is open, its event loop
    counts as running in this thread, and a later file's ``asyncio.run`` would fail."""
    from playwright.sync_api import sync_playwright

    from webrig import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
