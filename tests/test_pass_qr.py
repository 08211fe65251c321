"""The pass page's own QR encoder (cloud/pass_page/qr.js), run where it runs: in a real browser
(Debian's Chromium through Playwright, so CI needs no Node). Every symbol it makes is read back
by zxing-cpp (the door's decoder) from a rendered image, and checked against the standard's
capacity table and against segno, an independent encoder: the same version for the same text
and level, and, for a forced mask, the same modules.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import numpy as np
import pytest
import segno
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.passes import pass_payload

QR_JS = Path(__file__).resolve().parents[1] / "cloud" / "pass_page" / "qr.js"
ORIGIN = "http://qr.test"  # answered by route interception: nothing leaves the browser
ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
QUIET_ZONE = 4
SCALE = 4

# The standard's capacity table (ISO/IEC 18004, table 7): the most characters a version holds,
# versions 1 to 10, per mode and error correction level.
CAPACITY = {
    ("alphanumeric", "L"): [25, 47, 77, 114, 154, 195, 224, 279, 335, 395],
    ("alphanumeric", "M"): [20, 38, 61, 90, 122, 154, 178, 221, 262, 311],
    ("byte", "L"): [17, 32, 53, 78, 106, 134, 154, 192, 230, 271],
    ("byte", "M"): [14, 26, 42, 62, 84, 106, 122, 152, 180, 213],
}
# Data codewords per version (1..10) and level: where the pad bytes end.
DATA_CODEWORDS = {
    "L": [19, 34, 55, 80, 108, 136, 156, 194, 232, 274],
    "M": [16, 28, 44, 64, 86, 108, 124, 154, 182, 216],
}


@pytest.fixture(scope="module")
def encoder(browser):
    """``encode(cases)``: each case ``{"text", "options"}`` through qr.js's ``encodeText`` in
    one page; each answer is the symbol (rows as strings of 0/1) or ``{"error": name}``."""
    source = QR_JS.read_text(encoding="utf-8")
    page = browser.new_page()

    def serve(route):
        if route.request.url == f"{ORIGIN}/qr.js":
            route.fulfill(body=source, content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>qr</title>", content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/")

    def encode(cases: list[dict]) -> list[dict]:
        return page.evaluate(
            """async (cases) => {
                const qr = await import("/qr.js");
                return cases.map(({text, options}) => {
                    try {
                        const s = qr.encodeText(text, options);
                        const rows = s.rows.map(r => r.map(d => (d ? "1" : "0")).join(""));
                        return {version: s.version, level: s.level, mask: s.mask,
                                mode: s.mode, size: s.size, rows};
                    } catch (error) {
                        return {error: error.name};
                    }
                });
            }""",
            cases,
        )

    try:
        yield encode
    finally:
        page.close()


def image_of(rows: list[str]) -> np.ndarray:
    """A symbol as a camera-ready grey image: black modules on white, the quiet zone around it,
    each module SCALE x SCALE pixels."""
    modules = np.array([[0 if c == "1" else 255 for c in row] for row in rows], dtype=np.uint8)
    framed = np.pad(modules, QUIET_ZONE, constant_values=255)
    return np.kron(framed, np.ones((SCALE, SCALE), dtype=np.uint8))


def read_back(rows: list[str]):
    found = zxingcpp.read_barcodes(image_of(rows), formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(found) == 1, "zxing-cpp did not read exactly one QR code"
    return found[0]


def segno_rows(text: str, level: str, mode: str, mask: int | None = None) -> segno.QRCode:
    return segno.make_qr(text, error=level, mode=mode, mask=mask, boost_error=False)


def assert_reads_back(text: str, symbol: dict, level: str) -> None:
    assert "error" not in symbol, symbol
    assert symbol["size"] == 17 + 4 * symbol["version"] == len(symbol["rows"])
    found = read_back(symbol["rows"])
    assert found.bytes == text.encode("utf-8")
    assert found.text == text
    assert found.ec_level == level
    assert found.extra["Version"] == str(symbol["version"])
    assert found.extra["DataMask"] == symbol["mask"]


def random_pass_payload(rng: random.Random) -> str:
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    pass_id = base64.b32encode(rng.randbytes(5)).decode()
    org = rng.choice(["org_0001", "org_" + rng.randbytes(8).hex(), "Fitness Über GmbH"])
    return pass_payload(key, org, pass_id, rng.randrange(2**32))


def test_pass_codes_are_version_5_at_level_m_and_read_back_exactly(encoder):
    rng = random.Random(5)
    payloads = [random_pass_payload(rng) for _ in range(120)]
    symbols = encoder([{"text": p, "options": {"level": "M"}} for p in payloads])
    for payload, symbol in zip(payloads, symbols, strict=True):
        assert len(payload) == 122
        assert (symbol["version"], symbol["level"], symbol["mode"]) == (5, "M", "alphanumeric")
        assert symbol["size"] == 37
        assert_reads_back(payload, symbol, "M")
        assert segno_rows(payload, "M", "alphanumeric").version == 5


def boundary_cases() -> list[tuple[str, str, int, int]]:
    """(mode, level, length, version the standard's table gives it) at every version's edge:
    the longest text a version holds, and one character more."""
    cases = []
    for (mode, level), capacities in CAPACITY.items():
        for version, most in enumerate(capacities, start=1):
            cases.append((mode, level, most, version))
            cases.append((mode, level, most + 1, version + 1))  # 11: too long for version 10
        cases.append((mode, level, 1, 1))
    return cases


def text_of(mode: str, length: int, rng: random.Random) -> str:
    alphabet = ALPHANUMERIC if mode == "alphanumeric" else "abcdefghijklmnopqrstuvwxyz?&=_~#"
    return "".join(rng.choice(alphabet) for _ in range(length))


def test_every_version_edge_of_the_standards_capacity_table(encoder):
    rng = random.Random(7)
    cases = boundary_cases()
    texts = [text_of(mode, length, rng) for mode, _, length, _ in cases]
    symbols = encoder(
        [
            {"text": text, "options": {"level": level, "mode": mode}}
            for text, (mode, level, _, _) in zip(texts, cases, strict=True)
        ]
    )
    for text, (mode, level, _, version), symbol in zip(texts, cases, symbols, strict=True):
        if version > 10:
            assert symbol == {"error": "RangeError"}
            continue
        assert (symbol["version"], symbol["mode"]) == (version, mode)
        assert segno_rows(text, level, mode).version == version
        assert_reads_back(text, symbol, level)


def test_many_texts_in_both_modes_read_back_with_segnos_version(encoder):
    rng = random.Random(11)
    cases = []
    for _ in range(160):
        level = rng.choice("LM")
        kind = rng.choice(["alphanumeric", "ascii", "utf-8"])
        if kind == "alphanumeric":
            text = text_of(
                "alphanumeric", rng.randint(1, CAPACITY[("alphanumeric", level)][9]), rng
            )
        elif kind == "ascii":
            text = text_of("byte", rng.randint(1, CAPACITY[("byte", level)][9]), rng)
        else:
            # Multi-byte characters: the limit is in bytes, so fewer characters.
            text = "".join(rng.choice("aé€ß→z") for _ in range(rng.randint(1, 60)))
        cases.append((text, level))
    symbols = encoder([{"text": text, "options": {"level": level}} for text, level in cases])
    for (text, level), symbol in zip(cases, symbols, strict=True):
        mode = "alphanumeric" if all(c in ALPHANUMERIC for c in text) else "byte"
        assert symbol["mode"] == mode
        assert symbol["version"] == segno_rows(text, level, mode).version
        assert_reads_back(text, symbol, level)


def ends_on_a_codeword(text: str, level: str, version: int) -> bool:
    """True when the segment plus its terminator ends exactly on a byte: segno then adds a byte
    of zero padding bits the standard does not (it pads only "if the bit stream does not end at
    a codeword boundary"), so its modules differ from a conforming encoder's there."""
    count_bits = 9 if version <= 9 else 11
    bits = 4 + count_bits + 11 * (len(text) // 2) + 6 * (len(text) % 2)
    capacity = DATA_CODEWORDS[level][version - 1] * 8
    return (bits + min(4, capacity - bits)) % 8 == 0


def test_each_forced_mask_gives_segnos_symbol_module_for_module(encoder):
    rng = random.Random(13)
    cases = []
    for level in "LM":
        for version in range(1, 11):
            capacities = CAPACITY[("alphanumeric", level)]
            fewest = capacities[version - 2] + 1 if version > 1 else 1  # not the version below
            while True:
                text = text_of("alphanumeric", rng.randint(fewest, capacities[version - 1]), rng)
                if not ends_on_a_codeword(text, level, version):
                    break
            for mask in range(8):
                cases.append((text, level, version, mask))
    symbols = encoder([{"text": t, "options": {"level": lv, "mask": m}} for t, lv, _, m in cases])
    for (text, level, version, mask), symbol in zip(cases, symbols, strict=True):
        assert (symbol["version"], symbol["mask"]) == (version, mask)
        theirs = segno_rows(text, level, "alphanumeric", mask=mask)
        assert theirs.version == version
        assert symbol["rows"] == ["".join("1" if m else "0" for m in row) for row in theirs.matrix]
        assert_reads_back(text, symbol, level)


def penalty(rows: list[str]) -> int:
    """The standard's mask evaluation (ISO/IEC 18004, 8.8.2), written out again here: N1 runs of
    5+ (3 + extra), N2 2x2 blocks (3 each), N3 1:1:3:1:1 with 4 light modules on one side (40;
    outside the symbol counts as light), N4 10 per full 5 % away from half dark."""
    size = len(rows)
    lines = rows + ["".join(row[x] for row in rows) for x in range(size)]
    score = 0
    for line in lines:
        run = 1
        for i in range(1, size + 1):
            if i < size and line[i] == line[i - 1]:
                run += 1
                continue
            if run >= 5:
                score += 3 + run - 5
            run = 1
        padded = "0000" + line + "0000"
        for start in range(len(padded) - 6):
            if padded[start : start + 7] == "1011101" and (
                padded[start - 4 : start] == "0000" or padded[start + 7 : start + 11] == "0000"
            ):
                score += 40
    for y in range(size - 1):
        for x in range(size - 1):
            if rows[y][x] == rows[y][x + 1] == rows[y + 1][x] == rows[y + 1][x + 1]:
                score += 3
    dark = sum(row.count("1") for row in rows)
    score += 10 * (abs(dark * 20 - size * size * 10) // (size * size))
    return score


def test_the_chosen_mask_is_one_with_the_lowest_penalty(encoder):
    rng = random.Random(17)
    texts = [random_pass_payload(rng) for _ in range(6)]
    texts += [text_of("byte", n, rng) for n in (5, 40, 150)]
    texts += [text_of("alphanumeric", n, rng) for n in (10, 200)]
    chosen = encoder([{"text": t, "options": {"level": "M"}} for t in texts])
    forced = encoder(
        [{"text": t, "options": {"level": "M", "mask": m}} for t in texts for m in range(8)]
    )
    masks_used = set()
    for i, (text, symbol) in enumerate(zip(texts, chosen, strict=True)):
        scores = [penalty(forced[i * 8 + m]["rows"]) for m in range(8)]
        assert scores[symbol["mask"]] == min(scores), (text, scores)
        assert symbol["rows"] == forced[i * 8 + symbol["mask"]]["rows"]
        masks_used.add(symbol["mask"])
    assert len(masks_used) > 1  # the choice depends on the content


def test_a_smudged_pass_code_still_reads(encoder):
    """Error correction at work: level M restores a blotch over about 8 % of the modules."""
    payload = random_pass_payload(random.Random(19))
    (symbol,) = encoder([{"text": payload, "options": {"level": "M"}}])
    rows = [list(row) for row in symbol["rows"]]
    for y in range(14, 24):
        for x in range(14, 24):
            rows[y][x] = "1"  # a dark blotch in the middle of the data
    smudged = ["".join(row) for row in rows]
    assert smudged != symbol["rows"]
    assert read_back(smudged).text == payload


def test_what_cannot_be_encoded_is_refused(encoder):
    answers = encoder(
        [
            {"text": "A" * 312, "options": {"level": "M"}},  # alphanumeric past 10-M
            {"text": "a" * 272, "options": {"level": "L"}},  # bytes past 10-L
            {"text": "HELLO", "options": {"level": "Q"}},
            {"text": "hello", "options": {"mode": "alphanumeric"}},
            {"text": "HELLO", "options": {"mask": 8}},
            {"text": "HELLO", "options": {"mode": "kanji"}},
        ]
    )
    assert [a.get("error") for a in answers] == [
        "RangeError",
        "RangeError",
        "TypeError",
        "TypeError",
        "TypeError",
        "TypeError",
    ]
