"""``kiosk decode IMAGE...``: output format, bad files, and hostile payloads kept off the terminal."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from devtools.decodefiles import decode_files, terminal_safe
from hardware.decode.zxing import ZxingDecoder
from hardware.fakes.synthetic import compose_frame, render_code


def run(paths):
    out, err = io.StringIO(), io.StringIO()
    status = decode_files([str(p) for p in paths], ZxingDecoder(), out, err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def card(tmp_path):
    path = tmp_path / "card.png"
    cv2.imwrite(str(path), compose_frame("M-000123-7F3A9C2E", code_fraction=0.4, rotation_deg=15))
    return path


def test_one_line_per_file_with_the_payload(card):
    status, out, err = run([card])
    assert status == 0
    assert out == f"{card}\tM-000123-7F3A9C2E\n"
    assert err == ""


def test_a_picture_without_a_code_prints_a_dash(tmp_path):
    empty = tmp_path / "wall.jpg"
    cv2.imwrite(str(empty), compose_frame(None, background="texture", seed=4))
    assert run([empty]) == (0, f"{empty}\t-\n", "")


def test_several_files_keep_their_order_and_bad_ones_are_explained(card, tmp_path):
    missing = tmp_path / "missing.png"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    status, out, err = run([missing, card, text, tmp_path])
    assert status == 0
    assert out.splitlines() == [
        f"{missing}\t-",
        f"{card}\tM-000123-7F3A9C2E",
        f"{text}\t-",
        f"{tmp_path}\t-",
    ]
    lines = err.splitlines()
    assert len(lines) == 3
    assert str(missing) in lines[0] and "no such file" in lines[0]
    assert str(text) in lines[1] and "not an image" in lines[1]
    assert str(tmp_path) in lines[2] and "directory" in lines[2]


def test_two_codes_in_one_picture_give_two_lines(tmp_path):
    frame = np.full((480, 900), 200, np.uint8)
    for x, payload in [(30, "FIRST-1"), (480, "SECOND-2")]:
        code = render_code(payload, 8)
        frame[60 : 60 + code.shape[0], x : x + code.shape[1]] = code
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), frame)
    _, out, _ = run([path])
    assert sorted(out.splitlines()) == [f"{path}\tFIRST-1", f"{path}\tSECOND-2"]


def test_a_hostile_payload_is_escaped_before_it_reaches_the_terminal(tmp_path):
    hostile = "\x1b[31mGRANTED\x1b[0m\r\n\tok"
    path = tmp_path / "evil.png"
    cv2.imwrite(str(path), compose_frame(hostile, code_fraction=0.5))
    _, out, _ = run([path])
    assert out == f"{path}\t\\x1b[31mGRANTED\\x1b[0m\\r\\n\\tok\n"
    assert "\x1b" not in out and "\r" not in out


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain-123", "plain-123"),
        (b"back\\slash", "back\\\\slash"),
        (b"\xff\xfe bad utf-8", "\\xff\\xfe bad utf-8"),
        ("caf\u00e9 \u202eevil".encode(), "caf\u00e9 \\u202eevil"),  # bidi override escaped
        (b"\x00\x07\x7f", "\\x00\\x07\\x7f"),
        ("tab\there", "tab\\there"),
    ],
)
def test_terminal_safe_escapes_everything_a_terminal_could_act_on(raw, shown):
    assert terminal_safe(raw) == shown


def test_a_ready_pipeline_is_used_without_its_motion_gate(card):
    from kiosk.door.reader import QrReader

    gated = QrReader(ZxingDecoder(), motion_gate=True)
    out, err = io.StringIO(), io.StringIO()
    decode_files([str(card)] * 3, gated, out, err)
    assert out.getvalue().splitlines() == [f"{card}\tM-000123-7F3A9C2E"] * 3
    assert gated.stats.frames == 0  # only its decoder was borrowed, never its gate
