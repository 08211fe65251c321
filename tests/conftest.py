"""Shared pytest setup."""

import os

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timing assertion; on a shared, noisy CI machine it fails
# for reasons unrelated to behaviour. Speed is measured by `kiosk bench`, never by tests.
settings.register_profile("kiosk", deadline=None)
settings.load_profile("kiosk")


@pytest.fixture(autouse=True)
def _no_kiosk_overrides(monkeypatch):
    """In-process tests never see the developer's KIOSK_* overrides either."""
    for name in [k for k in os.environ if k.startswith("KIOSK_")]:
        monkeypatch.delenv(name)
