"""The documentation stands on its own: links resolve inside the repository, nothing cites files a clone lacks.

Checked for every tracked Markdown file (README.md, docs/*.md, benchmarks/README.md, …):
- a relative link or image must name a tracked file or directory inside the repository (a link that
  leaves it, such as `../elsewhere/x.md`, fails even when that file exists on this machine);
- an anchor into a Markdown file (`README.md#decisions`, `#1-words`) must name one of its headings,
  slugged the way GitHub does.
And no tracked file may cite the internal product spec that lived outside the repository; product
behaviour is in docs/BEHAVIOUR.md, whose numbered sections code comments cite.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_DOCS = ("README.md", "docs/BEHAVIOUR.md", "docs/DESIGN.md", "benchmarks/README.md")

# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("../" + "shared", "SPEC" + ".md", "SPEC" + " §")

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


@cache
def tracked_files() -> frozenset[str] | None:
    """Repository-relative paths git tracks, or None outside a git checkout (e.g. an unpacked sdist)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset(p for p in out.decode().split("\0") if p)


def markdown_files() -> list[Path]:
    tracked = tracked_files()
    if tracked is None:
        names = {"README.md", "benchmarks/README.md", *(p.relative_to(ROOT).as_posix()
                                                       for p in (ROOT / "docs").glob("*.md"))}
    else:
        names = {p for p in tracked if p.endswith(".md")}
    return [ROOT / n for n in sorted(names) if (ROOT / n).is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        out.append((n, _CODE_SPAN.sub(lambda s: " " * len(s.group(0)), line)))
    return out


def link_targets(text: str) -> list[tuple[int, str]]:
    """Every link and image target in prose: inline, reference definitions and HTML src/href."""
    found = []
    for n, line in prose_lines(text):
        for pattern in (_INLINE, _REFERENCE, _HTML):
            for m in pattern.finditer(line):
                target = m.group(1).strip()
                if target.startswith("<") and target.endswith(">"):
                    target = target[1:-1].strip()
                found.append((n, target))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces → '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(out)


def _in_repository(root: Path, rel: str, tracked: frozenset[str] | None) -> bool:
    if tracked is None:
        return (root / rel).exists()
    return rel in tracked or any(p.startswith(rel.rstrip("/") + "/") for p in tracked)


def link_problems(md: Path, root: Path = ROOT, tracked: frozenset[str] | None = None) -> list[str]:
    """What is wrong with the relative links of one Markdown file (empty when all resolve)."""
    problems = []
    where = md.relative_to(root).as_posix()
    for n, target in link_targets(md.read_text(encoding="utf-8")):
        if not target or _SCHEME.match(target):
            continue  # an absolute URL: not ours to check offline
        raw_path, _, anchor = target.partition("#")
        raw_path = unquote(raw_path.split("?", 1)[0])
        if raw_path.startswith("/"):
            problems.append(f"{where}:{n}: {target!r} is an absolute path; link relative to the file")
            continue
        resolved = (md.parent / raw_path).resolve() if raw_path else md.resolve()
        try:
            rel = resolved.relative_to(root.resolve()).as_posix()
        except ValueError:
            problems.append(f"{where}:{n}: {target!r} leaves the repository")
            continue
        if raw_path and not (resolved.exists() and _in_repository(root, rel, tracked)):
            problems.append(f"{where}:{n}: {target!r} names no {'tracked ' if tracked else ''}file in the repository")
            continue
        if anchor and resolved.suffix == ".md" and resolved.is_file() and unquote(anchor) not in anchors(resolved):
            problems.append(f"{where}:{n}: {target!r}: no heading with anchor #{anchor} in {rel}")
    return problems


def test_the_documents_we_promise_exist_and_are_checked() -> None:
    checked = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert set(REQUIRED_DOCS) <= checked


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_images_resolve_inside_the_repository(md: Path) -> None:
    assert link_problems(md, ROOT, tracked_files()) == []


def test_no_tracked_file_cites_the_spec_outside_the_repository() -> None:
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout: no list of tracked files")
    hits = []
    for rel in sorted(tracked):
        path = ROOT / rel
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        data = path.read_bytes()
        if not any(needle.encode() in data for needle in FORBIDDEN):
            continue
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if any(needle in line for needle in FORBIDDEN):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert hits == [], "cite docs/BEHAVIOUR.md (and its § numbers) instead:\n" + "\n".join(hits)


def test_the_link_checker_catches_what_it_should(tmp_path: Path) -> None:
    """The checker itself: a missing file, a link out of the repository, a bad anchor; code is ignored."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("# Outside\n")
    (root / "docs" / "B.md").write_text("# 1. Words\n\n## Metrics: tables\n\n```\n# not a heading\n```\n")
    (root / "pic.png").write_bytes(b"\x89PNG")
    (root / "README.md").write_text(
        "[ok](docs/B.md#1-words) ![ok](pic.png) [ok](docs/B.md#metrics-tables) [web](https://example.com/x)\n"
        "[missing](docs/nope.md) ![gone](img/none.png)\n"
        "[out](../outside.md) [abs](/etc/passwd)\n"
        "[anchor](docs/B.md#not-a-heading) [self](#nowhere)\n"
        "`[in code](nope.md)`\n```\n[in fence](nope.md)\n```\n"
        "[ref]: docs/absent.md\n<img src=\"none.svg\">\n")
    problems = link_problems(root / "README.md", root)
    assert [p.split(": ", 1)[1].split("'")[1] for p in problems] == [
        "docs/nope.md", "img/none.png", "../outside.md", "/etc/passwd",
        "docs/B.md#not-a-heading", "#nowhere", "docs/absent.md", "none.svg"]
    assert link_problems(root / "docs" / "B.md", root) == []
