"""Shared pytest setup."""

from hypothesis import settings

# Hypothesis's per-example deadline is a timing assertion; on a shared, noisy CI machine it fails
# for reasons unrelated to behaviour. Speed is measured by `kiosk bench`, never by tests.
settings.register_profile("kiosk", deadline=None)
settings.load_profile("kiosk")
