"""The repository's Markdown stands on its own: a clone has nothing beside it.

Every relative link and image of a tracked Markdown file must land inside the repository, on a
file or folder that exists, and an anchor (#...) on a heading of the Markdown file it names.
Links to the web (https:, mailto:) are left alone. No page may send the reader to
../shared/, the folder the project's founders worked from, which a user of the toolkit does
not have: docs/practices.md and docs/conventions.md are the copies.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def tracked_markdown() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "*.md"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*.md") if not {".venv", "build", "node_modules"} & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return INLINE.findall(body) + REFERENCE.findall(body)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link keeps its text
    text = re.sub(r"[`*_~]|<[^>]+>", "", text).strip().lower()
    kept = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def problems(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    found = []
    if "../shared" in text:
        found.append("mentions ../shared/, which a clone does not have (docs/ holds the copies)")
    for target in links(text):
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        if path_part.startswith("/"):
            found.append(f"{target}: an absolute path, outside the repository")
            continue
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page.resolve()
        if not dest.is_relative_to(ROOT):
            found.append(f"{target}: outside the repository")
        elif not dest.exists():
            found.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"{target}: no heading of {dest.relative_to(ROOT)} has the anchor #{anchor}")
    return found


PAGES = tracked_markdown()


def test_there_is_markdown_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/practices.md", "docs/conventions.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_link_stays_in_the_repository_and_lands(page):
    assert problems(page) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("see [the map](../shared/PRACTICES.md)", ["mentions ../shared/", "outside the repository"]),
    ("see `../shared/PRACTICES.md`", ["mentions ../shared/"]),
    ("see [x](../../outside.md)", ["outside the repository"]),
    ("see [x](/etc/passwd)", ["an absolute path"]),
    ("see [x](docs/none.md)", ["no such file"]),
    ("see [x](docs/practices.md#no-such-heading)", ["no heading of docs/practices.md"]),
    ("![img](docs/missing.png)", ["no such file"]),
    ("[ref]: docs/none.md", ["no such file"]),
    ("see [x](docs/practices.md#references) and [y](https://example.org/a)", []),
    ("see [x](README.md#the-two-commands)", []),
    ("```\n[x](docs/none.md)\n```\nand `[y](nowhere.md)`", []),
], ids=["shared-link", "shared-text", "outside", "absolute", "missing", "anchor", "image", "reference", "fine",
        "own-anchor", "code"])
def test_the_check_catches_what_it_should(tmp_path, text, expected):
    # A page at the repository's top, README.md's neighbour, so that its links resolve as README.md's.
    page = ROOT / f".link-check-{tmp_path.name}.md"
    try:
        page.write_text(text, encoding="utf-8")
        found = problems(page)
    finally:
        page.unlink(missing_ok=True)
    assert len(found) == len(expected), found
    for message, wanted in zip(found, expected):
        assert wanted in message, found


@pytest.mark.parametrize(("heading", "anchor"), [
    ("The two commands", "the-two-commands"),
    ("What a nightly run costs the controller", "what-a-nightly-run-costs-the-controller"),
    ("`make fleet`: every client", "make-fleet-every-client"),
    ("Practice, role, controls", "practice-role-controls"),
    ("Règles d'accès (RGPD)", "règles-daccès-rgpd"),
])
def test_anchors_are_githubs(heading, anchor):
    assert slug(heading) == anchor
