"""Every relative link in README.md and docs/*.md points at something that exists.

A link to a file or folder must resolve from the page that holds it; a link with a ``#fragment``
into a Markdown page (or within the page) must name one of that page's headings, slugged the way
GitHub does. Links to other sites (``https:``, ``mailto:``) are not followed: tests never reach the
internet. Text inside code (fenced blocks, inline code) holds no links and is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows).
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` for every line outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup, backticks, asterisks and punctuation dropped,
    lower case, spaces to hyphens (letters, digits, ``_`` and ``-`` stay)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every relative link on ``page``."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = match.group(1)
            if not _EXTERNAL.match(target):
                found.append((number, target))
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One message per link on ``page`` that does not resolve, naming the page (relative to
    ``root``), the line and the target."""
    problems = []
    for number, target in links(page):
        path_part, _, fragment = target.partition("#")
        where = f"{page.relative_to(root)}:{number}: {target}"
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{where}: no such file or folder")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            problems.append(f"{where}: {dest.relative_to(root)} has no heading #{fragment}")
    return problems


def test_the_readme_and_the_docs_are_checked():
    assert ROOT / "README.md" in PAGES
    assert ROOT / "docs" / "architecture.md" in PAGES
    assert all(links(page) for page in PAGES if page.name != "sync-protocol.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    assert broken_links(page) == []


def test_slugs_follow_github():
    assert slug("The owner's page") == "the-owners-page"
    assert slug("Connect a door (`kiosk enrol`, `kiosk sync`)") == (
        "connect-a-door-kiosk-enrol-kiosk-sync"
    )
    assert slug("Test card, self-test, status") == "test-card-self-test-status"


def test_broken_links_and_missing_headings_are_reported_and_code_is_skipped(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n\n## A part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#a-part) [again](other.md#a-part-1) [self](#page) [web](https://example.com)\n"
        "[gone](missing.md) [bad](other.md#nope) ![img](pics/x.png)\n"
        "`[in code](missing.md)`\n\n```\n[fenced](missing.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page, tmp_path) == [
        "page.md:4: missing.md: no such file or folder",
        "page.md:4: other.md#nope: other.md has no heading #nope",
        "page.md:4: pics/x.png: no such file or folder",
    ]
