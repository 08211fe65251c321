"""`kiosk testcard`: the printable test QR code, read by the production reader, refused by the door."""

from __future__ import annotations

import cv2
import pytest

from fakes import Scene
from kiosk.cli import main
from kiosk.config import default_config
from kiosk.core.model import Reason, Verdict
from kiosk.door.parts import build_reader
from kiosk.ops.testcard import (
    TEST_CODE,
    TestCardError,
    is_test_code,
    matrix,
    terminal_art,
    write_png,
)
from rig import Rig
from sync.credentials import StaticCode, parse_payload


def test_png_decodes_with_the_production_reader(tmp_path):
    path = write_png(tmp_path / "card.png")
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    reader = build_reader(default_config().decoder)
    assert [d.payload for d in reader.decode(pixels)] == [TEST_CODE.encode()]


def test_the_test_code_is_a_valid_card_the_door_refuses_as_unknown(tmp_path):
    assert parse_payload(TEST_CODE) == StaticCode(TEST_CODE)
    rig = Rig(tmp_path, Scene().add([TEST_CODE], 3))
    rig.run()
    assert [(o.decision.verdict, o.decision.reason) for o in rig.outcomes] == [
        (Verdict.DENIED, Reason.UNKNOWN_CODE)
    ]
    assert rig.relay_states() == [False]  # never opened


def test_is_test_code_ignores_scanner_padding_and_other_codes():
    assert is_test_code(TEST_CODE.encode() + b"\r\n")
    assert not is_test_code(b"FF-ALICE-1001")
    assert not is_test_code(b"\xff\x00")


def test_plain_terminal_art_draws_the_symbol_two_rows_per_line():
    rows = matrix()
    lines = terminal_art(ansi=False).splitlines()
    assert len(lines) == (len(rows) + 1) // 2 and all(len(line) == len(rows[0]) for line in lines)
    glyph = {(False, False): "█", (False, True): "▀", (True, False): "▄", (True, True): " "}
    padded = [*rows, [False] * len(rows[0])]
    for n, line in enumerate(lines):
        expected = "".join(
            glyph[(t, b)] for t, b in zip(padded[2 * n], padded[2 * n + 1], strict=True)
        )
        assert line == expected


def test_ansi_art_paints_black_and_white_explicitly():
    art = terminal_art()
    assert "\x1b[30;40m" in art and "\x1b[97;107m" in art and art.count("\x1b[0m") >= 10


def test_a_code_that_is_not_a_card_is_refused(tmp_path):
    with pytest.raises(TestCardError, match="4 to 64 characters"):
        write_png(tmp_path / "x.png", "no spaces allowed")


def test_cli_writes_the_png_and_prints_the_code(tmp_path, capsys):
    out = tmp_path / "card.png"
    assert main(["testcard", "--out", str(out), "--plain"]) == 0
    printed = capsys.readouterr().out
    assert TEST_CODE in printed and "unknown_code" in printed and "█" in printed
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["testcard", "--code", "bad code"]) == 1
    assert "4 to 64" in capsys.readouterr().err
