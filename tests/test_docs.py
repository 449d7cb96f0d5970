"""The docs match the tool: every ``kiln`` command and flag that README.md and docs/ show (in code
blocks and inline code) exists in the click CLI, and every relative link points at a file (and a
heading, for ``page.md#anchor``) that exists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from kiln.cli import main
from kiln.targets import REGISTRY

ROOT = Path(__file__).parents[1]
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").rglob("*.md"),
        ROOT / "benchmarks" / "studies" / "README.md",
    ]
)

FENCE = re.compile(r"^(```|~~~)")
INLINE = re.compile(r"(`+)(.+?)\1")
# `kiln` as a word that starts a command: not kiln.toml, kiln/..., kiln[serve], kiln_..., kiln's.
INVOCATION = re.compile(r"(?:^|(?<=[\s(;&|$]))kiln(?=\s+[-a-z])")
FLAG = re.compile(r"(?:^|(?<=[\s\[(|]))(--?[A-Za-z][A-Za-z0-9-]*)")
WORD = re.compile(r"\s+([a-z][a-z0-9-]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Snippet:
    """A piece of code a page shows: a fenced or indented block's line (continuations joined) or
    an inline code span, with where it is."""

    page: Path
    line: int
    text: str


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def _blocks(page: Path) -> tuple[list[Snippet], list[tuple[int, str]]]:
    """The page's code snippets, and its prose lines (what lies outside code blocks)."""
    code: list[Snippet] = []
    prose: list[tuple[int, str]] = []
    fenced = False
    lines = page.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif fenced or (line.startswith("    ") and not line.lstrip().startswith(("-", "*", "|"))):
            code.append(Snippet(page, number, line))
        else:
            prose.append((number, line))
    return _joined(code), prose


def _joined(lines: list[Snippet]) -> list[Snippet]:
    """Code lines with their continuations: a trailing backslash, or a next line that is indented
    and opens with an option (``[--threads 1,2]``, ``--pubkey KEY``), as usage lines wrap."""
    out: list[Snippet] = []
    for snippet in lines:
        stripped = snippet.text.strip()
        follows = out and out[-1].line == snippet.line - 1
        wraps = snippet.text[:1].isspace() and stripped.startswith(("[-", "-"))
        if follows and (out[-1].text.rstrip().endswith("\\") or (wraps and INVOCATION.search(out[-1].text))):
            out[-1] = Snippet(snippet.page, snippet.line, out[-1].text.rstrip(" \\") + " " + stripped)
        else:
            out.append(snippet)
    return out


def _snippets(page: Path) -> list[Snippet]:
    """Every code block line and every inline code span of a page."""
    code, prose = _blocks(page)
    spans = [Snippet(page, n, m.group(2)) for n, line in prose for m in INLINE.finditer(line)]
    return code + spans


def _options(command: click.Command) -> set[str]:
    """Every spelling of every option a command takes, --help included."""
    found: set[str] = set()
    for param in command.get_params(click.Context(command)):
        if isinstance(param, click.Option):
            found.update(param.opts, param.secondary_opts)
    return found


def _command(rest: str) -> tuple[list[str], click.Command | None, str]:
    """The command an invocation names (groups walked down to a leaf), the words that named it,
    and what follows them; None for a word that is no command."""
    command: click.Command = main
    path = ["kiln"]
    while isinstance(command, click.Group) and (word := WORD.match(rest)):
        found = command.commands.get(word.group(1))
        path.append(word.group(1))
        if found is None:
            return path, None, rest
        command, rest = found, rest[word.end() :]
    return path, command, rest


def _unknown(snippet: Snippet) -> list[str]:
    """What a snippet shows of kiln's CLI that the CLI does not have."""
    problems: list[str] = []
    where = f"{_name(snippet.page)}:{snippet.line}"
    for match in INVOCATION.finditer(snippet.text):
        # the invocation ends at a comment, a shell pipe, a chain or the end of the code span
        rest = re.split(r"\s#|\s\|\s|&&|;|`", snippet.text[match.end() :])[0]
        path, command, rest = _command(rest)
        if command is None:
            problems.append(f"{where}: {' '.join(path[:-1])} has no command '{path[-1]}' ({snippet.text.strip()})")
            continue
        known = _options(command)
        problems += [
            f"{where}: {' '.join(path)} has no option {flag} ({snippet.text.strip()})"
            for flag in FLAG.findall(rest)
            if flag not in known
        ]
    return problems


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    _, prose = _blocks(page)
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for _, line in prose:
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            slug = _slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(page: Path) -> list[str]:
    """Relative links of a page (outside code) whose file, or whose heading in a Markdown file, is missing."""
    problems: list[str] = []
    _, prose = _blocks(page)
    for number, line in prose:
        line = INLINE.sub("", line)
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file).resolve() if file else page
            where = f"{_name(page)}:{number}"
            if not resolved.exists():
                problems.append(f"{where}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                problems.append(f"{where}: {target} (no such heading in {_name(resolved)})")
    return problems


def test_the_pages_show_kiln_commands() -> None:
    # the parser finds what it checks: a guard against a regex that silently matches nothing
    shown = [s for page in PAGES for s in _snippets(page) if INVOCATION.search(s.text)]
    assert len(shown) > 50
    assert any("kiln bench" in s.text and "--batch" in s.text for s in shown)


def test_every_kiln_command_and_flag_the_docs_show_exists() -> None:
    problems = [p for page in PAGES for s in _snippets(page) for p in _unknown(s)]
    assert not problems, "the docs show what the CLI does not have:\n" + "\n".join(problems)


def test_every_relative_link_in_the_docs_resolves() -> None:
    problems = [p for page in PAGES for p in _broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kiln bench build/digits --batch 1,8 -t openvino:fp32", None),
        ("kiln bench build/digits --batchez 1", "no option --batchez"),
        ("kiln frobnicate x", "no command 'frobnicate'"),
        ("kiln serve x --port 8000   # --not-a-flag in a comment", None),
        ("pip install 'kiln[serve]' -c constraints.txt", None),
        ("kiln tune CONFIG.toml [--objective latency|throughput] [--threads 1,2] [--nope]", "no option --nope"),
    ],
)
def test_the_checker_tells_known_from_unknown(text: str, problem: str | None) -> None:
    found = _unknown(Snippet(ROOT / "README.md", 1, text))
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0]


def test_a_wrapped_usage_line_is_checked_whole() -> None:
    lines = [
        Snippet(ROOT / "README.md", 1, "kiln fleet SUITE.toml [--jobs N]"),
        Snippet(ROOT / "README.md", 2, "           [--out build/fleet] [--bogus]"),
    ]
    (joined,) = _joined(lines)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in _unknown(joined)] == ["kiln fleet has no option --bogus"]


def test_a_link_to_a_missing_file_or_heading_is_caught(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## `kiln serve`: the protocol\n")
    page = tmp_path / "page.md"
    links = "[ok](other.md#kiln-serve-the-protocol) [gone](nope.md) [head](#probe) [bad](other.md#nowhere)"
    page.write_text(f"# Probe\n\n{links} `[x](code.md)` [web](https://example.com)\n")
    problems = _broken_links(page)
    assert len(problems) == 2 and "nope.md" in problems[0] and "#nowhere" in problems[1]


def test_the_readme_targets_table_is_the_registry() -> None:
    rows = re.findall(r"^\| `([a-z]+)` \| ([a-z0-9, -]+) \|", (ROOT / "README.md").read_text(), re.MULTILINE)
    shown = {name: [p.strip() for p in precisions.split(",")] for name, precisions in rows}
    assert shown == {name: [p.name for p in spec.precisions] for name, spec in REGISTRY.items()}
