"""The text helpers shared by the device and the cloud: ``sync.text.one_line`` and the UTC text
of ``sync.protocol`` (one home each; the owner page and the control database use them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from kiosk.web import words
from sync.protocol import ProtocolError, parse_utc, utc_from_text, utc_text
from sync.text import ONE_LINE_CHARS, one_line


def test_one_line_flattens_control_characters_and_collapses_spaces():
    assert one_line("  a\nb\r\n\tc\x00d\x1b[31m e\u202ef  ") == "a b c d [31m e f"
    assert one_line(42) == "42"
    assert one_line(None) == "None"
    assert one_line("") == ""


def test_one_line_cuts_at_the_limit_with_an_ellipsis_that_counts():
    assert one_line("x" * 10, 10) == "x" * 10
    assert one_line("x" * 11, 10) == "x" * 9 + "…"
    assert ONE_LINE_CHARS == 200
    long = one_line("y" * 5000)
    assert len(long) == 200 and long.endswith("…")


def test_one_line_looks_at_a_bounded_prefix_of_a_huge_value():
    # Whitespace runs collapse after the cut, so a megabyte of spaces then text gives nothing.
    assert one_line(" " * 1_000_000 + "tail", 10) == ""
    assert len(one_line("z" * 1_000_000, 10)) == 10


def test_the_owner_page_uses_the_shared_one_line():
    assert words.one_line is one_line


def test_utc_text_round_trips_through_both_readers():
    for moment in (
        datetime(2026, 5, 1, 17, 3, 9, 120000, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),  # zero-padded: text order stays time order
        datetime(2026, 5, 1, 19, 3, 9, tzinfo=timezone(timedelta(hours=2))),
    ):
        text = utc_text(moment)
        assert len(text) == 27 and text.endswith("Z")
        assert utc_from_text(text) == moment
        assert utc_from_text(text).tzinfo is UTC
        assert parse_utc(text, "t") == moment


def test_utc_from_text_refuses_other_text_with_a_value_error():
    for bad in (
        "2026-05-01T17:03:09Z",
        "2026-05-01 17:03:09.000000",
        "2026-02-30T00:00:00.000000Z",
    ):
        with pytest.raises(ValueError):
            utc_from_text(bad)
    with pytest.raises(ProtocolError, match="not a real date"):
        parse_utc("2026-02-30T00:00:00.000000Z", "t")
