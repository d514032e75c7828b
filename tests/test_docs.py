"""The docs' relative links lead somewhere: the file each one names exists, and so does the
heading its anchor names."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#* *$", flags=re.MULTILINE)


def without_blocks(path: Path) -> str:
    """The file without its fenced code blocks (a '#' there starts a comment, not a heading)."""
    return FENCE.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a file's headings: lower case, punctuation dropped, spaces
    as hyphens, a repeated one numbered."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in HEADING.findall(without_blocks(path)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def relative_links(path: Path) -> list[str]:
    """Links outside code (fenced blocks and inline spans), other than URLs."""
    text = INLINE_CODE.sub("", without_blocks(path))
    return [link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link names a file that exists and, with an anchor, a heading in it."""
    broken = []
    for link in relative_links(doc):
        target, _, anchor = link.partition("#")
        where = (doc.parent / target).resolve() if target else doc
        name = where.relative_to(ROOT).as_posix() if where.is_relative_to(ROOT) else str(where)
        if not where.exists():
            broken.append(f"{link}: no file {name}")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{link}: no heading #{anchor} in {name}")
    assert not broken, broken


def test_the_link_checker_sees_links_and_anchors() -> None:
    """The checker finds links outside code only, and makes GitHub's anchors of headings."""
    readme = ROOT / "README.md"
    assert "docs/configuration.md" in relative_links(readme)
    assert "live-configuration" in anchors(readme)
    benchmarks = anchors(ROOT / "docs" / "benchmarks.md")
    assert "fleet-shared-state-against-the-predecessors-approach-and-litellm" in benchmarks
