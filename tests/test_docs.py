"""The documentation's links hold: no reference to a Markdown file or section dangles.

* every ``*.md`` path (with its ``#anchor``, if any) referenced from okd/, conf/, tests/, run.py,
  README.md, BENCHMARKS.md, docs/ and sweeps/ exists in the repository, relative to the repository
  root or to the referring file; an anchor must be a heading of that file (GitHub's slug) or an
  explicit ``<a id=...>``;
* in-page links ``[...](#anchor)`` of the Markdown files point to a heading of the same file; a
  Markdown file named with ``, section`` and a quoted title (as error messages do) has that heading;
* paths of the repository quoted in docs/ (``okd/...``, ``conf/...``, ``tests/...``) exist;
* every option of conf/weighting/ has its section (``### <option>``) in docs/weighting.md, so a
  weighting cannot be added without documentation (docs/weighting.md#methods);
* nothing refers to the design documents the project started from, which are not part of it.

Plain text scanning, no imports of okd: well under a second.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *sorted((ROOT / "okd").rglob("*.py")),
    *sorted((ROOT / "conf").rglob("*.yaml")),
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "tests").rglob("*.sh")),
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "sweeps").rglob("*.md")),
    *sorted((ROOT / "hydra_plugins").rglob("*.py")),
    ROOT / "run.py",
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
]
#: Markdown files that okd writes into output folders (okd.report, okd.gpu_check): names, not links.
GENERATED = {"report.md", "gpu_check.md"}
WEIGHTING_DOCS = ROOT / "docs/weighting.md"

MD_REF = re.compile(r"(?P<path>[\w./-]*[\w-]\.md)(?![\w-])(?:#(?P<anchor>[\w-]+))?")
IN_PAGE = re.compile(r"\]\(#(?P<anchor>[^)\s]+)\)")
SECTION_REF = re.compile(r"(?P<path>[\w./-]*\.md),? section \"(?P<title>[^\"]+)\"")
REPO_PATH = re.compile(r"`(?P<path>(?:okd|conf|tests|sweeps|hydra_plugins)/[^`\s]*)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
# built from parts so that this file does not match the search it implements
FOREIGN = re.compile(r"\b(?:SPEC|ZOO|ARCHITECTURE)(?:\.md|\s*§)")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def markdown_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in text_of(path).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(title: str) -> str:
    """GitHub's heading anchor: link text kept, lower case, punctuation dropped, spaces -> hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # [text](url) -> text
    title = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return title.replace(" ", "-")


@lru_cache(maxsize=None)
def headings(path: Path) -> tuple[tuple[str, ...], frozenset[str]]:
    """(heading titles, anchors) of a Markdown file; repeated slugs get -1, -2, ... as on GitHub."""
    titles, anchors, seen = [], set(), {}
    for line in markdown_lines(path):
        anchors.update(EXPLICIT_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        title = match.group(2)
        titles.append(title)
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
    return tuple(titles), frozenset(anchors)


def resolve(reference: str, source: Path) -> Path | None:
    for base in (ROOT, source.parent):
        candidate = (base / reference).resolve()
        if candidate.is_file() and ROOT in candidate.parents:
            return candidate
    return None


def md_references() -> list[tuple[Path, int, str, str | None]]:
    refs = []
    for source in SOURCES:
        if not source.is_file():
            continue
        for number, line in enumerate(text_of(source).splitlines(), 1):
            for match in MD_REF.finditer(line):
                if re.search(r"https?://\S*$", line[:match.start()]):
                    continue  # part of a URL: not a file of this repository
                if line.startswith("](", match.end()):
                    continue  # the text of a Markdown link: its target is what must exist
                refs.append((source, number, match.group("path"), match.group("anchor")))
    return refs


def test_references_to_markdown_files_exist():
    dangling = []
    for source, number, path, anchor in md_references():
        target = resolve(path, source)
        where = f"{rel(source)}:{number}"
        if target is None:
            if Path(path).name in GENERATED:
                continue
            dangling.append(f"{where}: {path} does not exist")
        elif anchor is not None and anchor not in headings(target)[1]:
            dangling.append(f"{where}: {path}#{anchor}: no such section in {rel(target)}")
    assert not dangling, "dangling documentation references:\n" + "\n".join(dangling)


def test_in_page_links_and_named_sections_exist():
    dangling = []
    for source in SOURCES:
        if source.suffix == ".md":
            anchors = headings(source)[1]
            for number, line in enumerate(markdown_lines(source), 1):
                dangling += [f"{rel(source)}: (#{m.group('anchor')}) is not a section of this file"
                             for m in IN_PAGE.finditer(line) if m.group("anchor") not in anchors]
        for number, line in enumerate(text_of(source).splitlines(), 1):
            for match in SECTION_REF.finditer(line):
                target = resolve(match.group("path"), source)
                titles = headings(target)[0] if target else ()
                if match.group("title") not in titles:
                    dangling.append(f"{rel(source)}:{number}: {match.group('path')} has no section "
                                    f"{match.group('title')!r}")
    assert not dangling, "\n".join(dangling)


def test_paths_quoted_in_docs_exist():
    missing = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for number, line in enumerate(text_of(page).splitlines(), 1):
            for match in REPO_PATH.finditer(line):
                path = match.group("path").rstrip(".,;:")
                if any(c in path for c in "<>*{}$"):
                    continue  # a pattern (conf/weighting/<option>.yaml), not a file
                if not (ROOT / path).exists():
                    missing.append(f"{rel(page)}:{number}: {path}")
    assert not missing, "paths named in docs/ that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("option", sorted(p.stem for p in (ROOT / "conf" / "weighting").glob("*.yaml")))
def test_every_weighting_option_has_a_section(option):
    assert option in headings(WEIGHTING_DOCS)[1], (
        f"conf/weighting/{option}.yaml has no section in docs/weighting.md: add '### {option}' with its "
        f"update rule, defaults, state and references (see the other methods there)")


def test_nothing_refers_to_documents_outside_the_repository():
    found = [f"{rel(source)}:{number}: {line.strip()}"
             for source in SOURCES if source.is_file()
             for number, line in enumerate(text_of(source).splitlines(), 1) if FOREIGN.search(line)]
    assert not found, "references to documents that are not in the repository:\n" + "\n".join(found)
