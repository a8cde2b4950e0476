"""The README and docs/ stay true to the repository: links resolve, commands and `-p` names exist.

Documentation rots silently when a file moves, a command is renamed or a notebook parameter goes
away; these checks turn each of those into a failing test that names the page and the line.
"""
from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from geolib.__main__ import COMMANDS
from geolib.apps.pipeline import build_parser, discover, notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200  # the README is the front door; the manual lives in docs/

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
GEOLIB_COMMAND = re.compile(r"-m geolib ([a-z][\w-]*)")
P_OVERRIDE = re.compile(r"(?:^|[\s`(])-p\s+([A-Za-z_]\w*)")
RUN_ALL = re.compile(r"\./run_all\.sh((?:\s+[^\s#`|]+)*)")


def _ids(pages: list[Path]) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in pages]


def _lines(page: Path) -> list[tuple[int, str]]:
    return list(enumerate(page.read_text(encoding="utf-8").splitlines(), start=1))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for _, line in _lines(page):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            base = slug(m.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page):
    broken = []
    for number, line in _lines(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not a file of the repository
                continue
            path_part, _, fragment = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.is_file() or ROOT not in dest.parents:
                broken.append(f"{page.name}:{number}: {target} (no such file in the repository)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{page.name}:{number}: {target} (no heading '#{fragment}' in {dest.name})")
    assert not broken, "fix the link or the heading:\n" + "\n".join(broken)


def test_link_checker_catches_a_missing_file_and_anchor(tmp_path):
    assert slug("Where the `full` profile departs: Divide&Classify (notebook 04)") == \
        "where-the-full-profile-departs-divideclassify-notebook-04"
    page = ROOT / "docs" / "profiles.md"
    assert "the-dry-run" in anchors(page) and "no-such-heading" not in anchors(page)


def _repository_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in out.splitlines() if (ROOT / name).is_file()]


def test_no_file_refers_outside_the_repository():
    """The repository must read on its own: no pointer to documents a user of it does not have."""
    forbidden = ("DESIGN" + ".md", "../" + "shared")
    hits = []
    for path in _repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        hits += [f"{path.relative_to(ROOT)}: {word}" for word in forbidden if word in text]
    assert not hits, "remove these references (docs/ holds the repository's own reference):\n" + "\n".join(hits)


def test_readme_stays_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (f"README.md has {len(lines)} lines (limit {README_MAX_LINES}): "
                                            "move detail into docs/ and link to it")


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_geolib_commands_exist(page):
    unknown = [f"{page.name}:{n}: python -m geolib {cmd}" for n, line in _lines(page)
               for cmd in GEOLIB_COMMAND.findall(line) if cmd not in COMMANDS]
    assert not unknown, f"not a command of geolib/__main__.py (have {', '.join(COMMANDS)}):\n" + "\n".join(unknown)


def _accepted_parameters() -> set[str]:
    return {name for nb in discover() for name in notebook_parameters(nb)}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_p_overrides_name_notebook_parameters(page):
    accepted = _accepted_parameters()
    shown = [(n, name) for n, line in _lines(page) for name in P_OVERRIDE.findall(line)
             if not name.isupper()]  # NAME is a placeholder
    unknown = [f"{page.name}:{n}: -p {name}" for n, name in shown if name not in accepted]
    assert not unknown, "no notebook accepts these names (see each notebook's parameters cell):\n" + "\n".join(unknown)


def _run_all_options() -> set[str]:
    options = {"--test", "--install", "--help", "-h"}
    for action in build_parser()._actions:
        options.update(action.option_strings)
    return options


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_run_all_options_exist(page):
    options = _run_all_options()
    unknown = []
    for n, line in _lines(page):
        for args in RUN_ALL.findall(line.split(" # ")[0]):
            words = args.split()
            i = 0
            while i < len(words):
                word = words[i]
                if word == "--test":
                    break  # the rest goes to pytest
                if re.match(r"--?[A-Za-z]", word) and word not in options:
                    unknown.append(f"{page.name}:{n}: ./run_all.sh … {word}")
                i += 3 if word in ("-p", "--parameter") else 1  # a value may itself start with '-'
    assert not unknown, "not an option of ./run_all.sh (see ./run_all.sh --help):\n" + "\n".join(unknown)


def test_checks_would_catch_a_wrong_name():
    assert "epochs" in _accepted_parameters() and "data_root" not in _accepted_parameters()
    assert GEOLIB_COMMAND.findall("torchrun --nproc_per_node 4 -m geolib train --profile full") == ["train"]
    assert P_OVERRIDE.findall("`./run_all.sh -p seed 1 -p NAME VALUE`") == ["seed", "NAME"]
    assert "--only" in _run_all_options() and "--onyl" not in _run_all_options()
