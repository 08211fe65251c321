"""One decision per presentation of a code."""

import pytest

from kiosk.core.debounce import Debouncer

S = 1_000_000_000  # one second in ns


@pytest.mark.parametrize(
    ("sightings", "expected"),
    [
        pytest.param([(b"a", 0)], [True], id="first sighting decides"),
        pytest.param([(b"a", 0), (b"a", S // 30), (b"a", 2 * S // 30)], [True, False, False],
                     id="held in view: once"),
        pytest.param([(b"a", 0), (b"b", S // 30)], [True, True], id="different code at once"),
        pytest.param([(b"a", 0), (b"a", 4 * S)], [True, True], id="back after the cooldown"),
        pytest.param([(b"a", 0), (b"a", 2 * S), (b"a", 4 * S), (b"a", 6 * S)],
                     [True, False, False, False], id="held for 6 s: still once"),
    ],
)  # fmt: skip
def test_debounce(sightings, expected):
    debouncer = Debouncer(cooldown_s=3.0)
    assert [debouncer.admit(key, t) for key, t in sightings] == expected


def test_memory_stays_bounded_with_many_codes():
    debouncer = Debouncer(cooldown_s=3.0)
    for i in range(10_000):
        debouncer.admit(str(i).encode(), i * S)  # one new code a second
    assert len(debouncer._last_seen) <= 65
