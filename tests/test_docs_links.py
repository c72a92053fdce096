"""
Every relative link of the README and of the pages under docs/ leads somewhere.

A link (``[text](target)``, ``![alt](target)``, a reference definition ``[ref]: target``, an HTML
``src``/``href``) must name a file or folder that exists, relative to the Markdown file's own folder,
and its ``#anchor``, if any, must be a heading of the target page as GitHub slugs it (or of the same
page for ``#anchor`` alone). Links with a scheme (``https:``, ``mailto:``) are not checked. Fenced
code blocks and inline code are not Markdown, so links and headings in them are ignored.

Standard library and pytest only: it runs in every virtualenv ``make test`` uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# A line that cannot be the text of a setext heading: a list item, a quote, a table row, a heading.
_NOT_PARAGRAPH = re.compile(r"^\s*(?:[-*+>|#]|\d+[.)])")
# Inline code, possibly across line breaks but never across a blank line.
_CODE_SPAN = re.compile(r"(`+)(?:(?!\n[ \t]*\n).)*?\1", re.DOTALL)
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text] or ![alt], with one level of nested brackets
    r"\(\s*(?:<([^<>\n]*)>|([^\s()]*(?:\([^\s()]*\)[^\s()]*)*))"  # (<target>) or (target)
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"  # an optional title
)
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(?:<([^<>\n]*)>|(\S+))", re.MULTILINE)
_HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
_HTML_ANCHOR = re.compile(r"<[a-z][^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# GitHub links a code file's lines with #L12 or #L12-L20.
_LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading, before de-duplication: its rendered text, lower-cased,
    without punctuation other than hyphens and underscores, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _without_fenced_code(text: str) -> list[str]:
    """The file's lines, with those of fenced code blocks (fences included) blanked."""
    lines: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                lines.append("")
                continue
            lines.append(line)
        else:
            closing = match.group(1) if match else ""
            if closing[:1] == fence[0] and len(closing) >= len(fence) and not line.strip().lstrip(fence[0]):
                fence = None
            lines.append("")
    return lines


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs, de-duplicated as GitHub does, and HTML ids."""
    lines = _without_fenced_code(text)
    headings: list[str] = []
    for index, line in enumerate(lines):
        atx = _ATX_HEADING.match(line)
        if atx:
            headings.append(atx.group(2) or "")
            continue
        previous = lines[index - 1] if index else ""
        if (
            _SETEXT_UNDERLINE.match(line)
            and previous.strip()
            and not _NOT_PARAGRAPH.match(previous)
            and not _ATX_HEADING.match(previous)
        ):
            headings.append(previous.strip())
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings:
        slug = github_slug(heading)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        found.add(slug)
    found.update(_HTML_ANCHOR.findall(_CODE_SPAN.sub("", "\n".join(lines))))
    return found


def links(text: str) -> list[str]:
    """Every link target of a page, outside code."""
    prose = _CODE_SPAN.sub("code", "\n".join(_without_fenced_code(text)))
    targets = [angled or bare for angled, bare in _INLINE_LINK.findall(prose)]
    targets += [angled or bare for angled, bare in _REFERENCE_DEFINITION.findall(prose)]
    targets += _HTML_LINK.findall(prose)
    return targets


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target``, linked from ``page``, leads nowhere; None when it resolves or is not checked."""
    if _SCHEME.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if not path_part:
        resolved = page
    elif path_part.startswith("/"):  # GitHub reads these from the repository's root
        resolved = (ROOT / path_part.lstrip("/")).resolve()
    else:
        resolved = (page.parent / path_part).resolve()
    if not resolved.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if not resolved.exists():
        return f"{target}: no such file or folder"
    if not anchor:
        return None
    anchor = unquote(anchor)
    if resolved.suffix.lower() != ".md":
        if resolved.is_file() and _LINE_ANCHOR.match(anchor):
            return None
        return f"{target}: #{anchor} on a file that is not Markdown"
    if anchor not in anchors(resolved.read_text(encoding="utf-8")):
        return f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("page", MARKDOWN_FILES, ids=[str(path.relative_to(ROOT)) for path in MARKDOWN_FILES])
def test_relative_links_resolve(page: Path) -> None:
    broken = [
        reason
        for target in links(page.read_text(encoding="utf-8"))
        if (reason := broken_link(page, target)) is not None
    ]
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        (
            "Retries never bill twice where Airflow allows it",
            "retries-never-bill-twice-where-airflow-allows-it",
        ),
        ("Persisting results (`output_path`)", "persisting-results-output_path"),
        ("Lineage (OpenLineage)", "lineage-openlineage"),
        ("Try it: two commands", "try-it-two-commands"),
        ("Re-runs never pay twice", "re-runs-never-pay-twice"),
        (
            "TaskResultTrigger, TaskResultSensor and the polling policy",
            "taskresulttrigger-taskresultsensor-and-the-polling-policy",
        ),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_duplicate_headings_get_numbered_slugs_and_code_is_no_heading() -> None:
    page = "# Errors\n\n```python\n# Errors\n```\n\n## Errors\n\nErrors\n------\n"
    assert anchors(page) == {"errors", "errors-1", "errors-2"}


def test_links_in_code_are_not_links() -> None:
    page = 'See [a](a.md) and `[b](b.md)`.\n\n```\n[c](c.md)\n```\n\n![d](d.png "title") [e\nf](<e f.md#x>)\n'
    assert links(page) == ["a.md", "d.png", "e f.md#x"]
