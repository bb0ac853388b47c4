"""The documents stay usable: the README a short front door, every relative link whole.

The README says what faregate is, gives the two commands and a first call, and points
into docs/; the reference material lives there. A link is relative when it names no
scheme: it must point at a file or folder of the checkout and, with a `#fragment`, at
a heading of that Markdown file, slugged as GitHub slugs headings.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 170

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (a YAML comment is no heading)."""
    lines: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading)  # inline code and emphasis marks
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    for line in _prose_lines(path):
        match = _HEADING.match(line)
        if match is None:
            continue
        slug = _slug(match.group(2))
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def _broken_links(path: Path) -> list[str]:
    broken: list[str] = []
    for line in _prose_lines(path):
        for target in _LINK.findall(line):
            if _SCHEME.match(target):
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
                broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


def test_the_readme_is_a_front_door_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")

    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make run" in text
    assert "make test" in text


def test_the_readme_points_into_every_document() -> None:
    text = README.read_text(encoding="utf-8")

    missing = [d.name for d in DOCUMENTS[1:] if f"docs/{d.name}" not in text]
    assert missing == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_relative_link_points_at_a_file_and_heading_that_exist(document: Path) -> None:
    assert _broken_links(document) == []


def test_headings_are_slugged_as_github_does() -> None:
    assert _slug("5. Take a worker") == "5-take-a-worker"
    assert _slug("Several workers' telemetry") == "several-workers-telemetry"
    assert _slug("The `faregate` command") == "the-faregate-command"
