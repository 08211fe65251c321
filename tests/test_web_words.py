"""The owner page's words (reasons, names, ages, errors) and the pure parts of its bundle and
metrics: secret redaction and label escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from kiosk.core.model import EventKind, Reason
from kiosk.web.diagnostics import REDACTED, config_toml, redact, without_member_ids
from kiosk.web.metrics import escape_label
from kiosk.web.words import (
    EVENT_WORDS,
    REASON_WORDS,
    age_words,
    credential_words,
    decision_name,
    error_words,
    event_words,
    local_time,
    mask_name,
    reason_words,
)


def test_every_reason_has_words_of_its_own():
    assert set(REASON_WORDS) == set(Reason)
    words = list(REASON_WORDS.values())
    assert len(set(words)) == len(words)
    for reason in Reason:
        assert reason_words(reason.value) == REASON_WORDS[reason]
        assert "_" not in REASON_WORDS[reason]  # words, not identifiers
    assert reason_words("passback") == "Already entered a moment ago (anti-passback)"
    assert reason_words("replica_stale") == "Member list too old to trust (no sync for too long)"


def test_capacity_and_visit_limit_in_plain_words():
    assert reason_words("at_capacity") == "Gym full (as many inside as the capacity allows)"
    assert reason_words("visit_limit") == "Visits for today used up (the plan's limit per day)"


def test_every_passage_event_has_words_of_its_own():
    assert set(EVENT_WORDS) == set(EventKind)
    words = list(EVENT_WORDS.values())
    assert len(set(words)) == len(words)
    for kind in EventKind:
        assert event_words(kind.value) == EVENT_WORDS[kind]
        assert "_" not in EVENT_WORDS[kind]
    assert event_words("annulled") == "Granted but did not go through"
    assert event_words("tailgating") == "Passage with no check-in"
    assert event_words("door_forced") == "Other event (door_forced)"  # a newer release's kind


def test_a_reason_from_a_newer_release_still_reads():
    assert reason_words("face_not_recognised") == "Other reason (face_not_recognised)"
    assert "\n" not in reason_words("a\nb")


@pytest.mark.parametrize(
    ("mode", "first", "last", "shown"),
    [
        ("first_name", "Alice", "Smith", "Alice S."),
        ("full", "Alice", "Smith", "Alice Smith"),
        ("initials", "Alice", "Smith", "A. S."),
        ("hidden", "Alice", "Smith", "member"),
        ("first_name", "Alice", "", "Alice"),
        ("initials", "", "Smith", "S."),
        ("full", "", "", "member"),
        ("first_name", "Al\nice", "S\x1bmith", "Al ice S."),
    ],
)
def test_names_are_masked_as_configured(mode, first, last, shown):
    assert mask_name(first, last, mode) == shown


def test_a_decision_without_a_member_or_with_a_departed_one():
    assert decision_name(False, None, None, "full") == "—"
    assert decision_name(True, None, None, "full") == "former member"
    assert decision_name(True, None, None, "hidden") == "member"
    with pytest.raises(ValueError, match="unknown name mode"):
        mask_name("A", "B", "everything")


def test_ages_and_local_times():
    assert [age_words(s) for s in (None, 0.4, 42, 150, 3 * 3600, 5 * 86400, -60)] == [
        "never", "just now", "42 s ago", "2 min ago", "3 h ago", "5 days ago",
        "in the future (clock changed?)",
    ]  # fmt: skip
    zone = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    assert local_time(now - timedelta(minutes=1), zone, now) == "10:59:00"
    assert local_time(now - timedelta(days=3), zone, now) == "Fri 1 May 11:00"
    assert local_time(now - timedelta(days=800), zone, now) == "2024-02-24 10:00"  # winter time


def test_sync_errors_in_plain_words_without_credentials():
    assert error_words(None) is None
    assert error_words("push: cannot reach the cloud at 127.0.0.1:8443 (connection failed)") == (
        "Uploading check-ins failed: cannot reach the cloud at 127.0.0.1:8443 (connection failed)"
    )
    assert error_words("pull: https://dev:s3cret@cloud.example/v1 answered 500") == (
        "Fetching the member list failed: https://cloud.example/v1 answered 500"
    )
    assert "\n" not in error_words("x\ny")


def test_config_redaction_keeps_paths_and_removes_secrets():
    tree = {
        "web": {"password_file": "/var/lib/x/owner-password", "password": "hunter2"},
        "sync": {"credentials_file": "/var/lib/x/device.json", "token": "ffd_abc", "api_key": "k"},
        "camera": {"replay_path": "rtsp://user:pa:ss@cam.local/s?auth=zz&fps=30", "fps": 30},
    }
    clean = redact(tree)
    assert clean["web"] == {"password_file": "/var/lib/x/owner-password", "password": REDACTED}
    assert clean["sync"]["token"] == REDACTED and clean["sync"]["api_key"] == REDACTED
    assert clean["sync"]["credentials_file"] == "/var/lib/x/device.json"
    assert clean["camera"]["replay_path"] == f"rtsp://{REDACTED}@cam.local/s?auth={REDACTED}&fps=30"
    text = config_toml(clean)
    assert "hunter2" not in text and "ffd_abc" not in text and "pa:ss" not in text
    assert '[camera]\nreplay_path = "rtsp://' in text and "fps = 30" in text


def test_config_toml_reads_back_as_the_same_tree():
    import tomllib

    from kiosk.config import as_dict, default_config

    tree = as_dict(default_config())
    assert tomllib.loads(config_toml(tree)) == tree


def test_status_loses_its_member_ids():
    status = {"door_id": "front", "recent_checkins": [{"seq": 1, "member_id": "m-1"}]}
    assert without_member_ids(status) == {"door_id": "front", "recent_checkins": [{"seq": 1}]}


def test_label_values_are_escaped():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


@pytest.mark.parametrize(
    ("reason", "by_pass", "words"),
    [
        ("subscription", False, "card"),
        ("subscription", True, "phone pass"),
        ("token_replayed", True, "phone pass"),
        ("unknown_code", False, "card"),
        ("malformed_code", False, "—"),  # not a credential at all
    ],
)
def test_credential_words(reason, by_pass, words):
    assert credential_words(reason, by_pass) == words
