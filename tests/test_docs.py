"""README and docs/ stay true: every link names a page (and heading) that exists, every command in README's code
blocks names a real script and flags that script's `--help` lists, README stays short, and no page speaks of who
measured a figure."""

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "PERFORMANCE.md", ROOT / "LEADERBOARD.md",
         ROOT / "DATA.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SCRIPT = re.compile(r"(?:^|\s)(?:\S*/)?python(?:3(?:\.\d+)?)?\s+(scripts/\w+\.py)((?:\s+[^|;&#]*)?)")
MAX_README_LINES = 250


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_names_a_page_and_heading_that_exist(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        assert where.exists(), f"{page.name} links to {target}: no such file"
        if anchor:
            assert where.suffix == ".md" and anchor in anchors(where), f"{page.name} links to {target}: no such heading"


def test_readme_links_every_docs_page_and_is_short():
    text = README.read_text()
    assert len(text.splitlines()) < MAX_README_LINES
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README)}
    mine = sorted((ROOT / "docs").glob("*.md"))
    assert mine and all(p.resolve() in linked for p in mine), [p.name for p in mine if p.resolve() not in linked]


def readme_commands() -> list[tuple[str, list[str]]]:
    """(script, its flags) of every `python scripts/X.py ...` in README's shell code blocks."""
    found = []
    for lang, block in FENCE.findall(README.read_text()):
        if lang not in ("bash", "sh", ""):
            continue
        for line in block.splitlines():
            for script, args in SCRIPT.findall(line.split(" # ")[0]):
                words = shlex.split(args.strip()) if args.strip() else []
                found.append((script, [w.split("=")[0] for w in words if w.startswith("--")]))
    return found


@cache
def help_text(script: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-1000:]}"
    return out.stdout


def test_readme_commands_name_real_scripts_and_flags():
    commands = readme_commands()
    assert {"scripts/speedrun.py", "scripts/compare.py", "scripts/prepare_data.py"} <= {s for s, _ in commands}
    for script, flags in commands:
        assert (ROOT / script).is_file(), f"README runs {script}, which does not exist"
        listed = set(re.findall(r"--[\w-]+", help_text(script)))
        unknown = [f for f in flags if f not in listed]
        assert not unknown, f"README passes {script} flags its --help does not list: {unknown}"


def test_no_page_says_who_measured():
    """Figures say what, where and when; `session` means only a training session of a run (--stop-after)."""
    for page in [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "PERFORMANCE.md"]:
        for line in page.read_text().splitlines():
            if re.search(r"session", line, flags=re.I):
                assert "--stop-after" in line or "training session" in line, f"{page.name}: {line.strip()}"


def test_ci_runs_exactly_readmes_test_commands():
    """.ci/run keeps README's test commands in step: each README line that runs pytest is in .ci/run verbatim
    (less the venv it creates once), but the long suite's, which README says CI leaves out; and .ci/run runs no
    other pytest line."""
    readme = [line.removeprefix("python3.11 -m venv .venv && ") for lang, block in FENCE.findall(README.read_text())
              if lang == "bash" for line in block.splitlines() if "pytest" in line]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    in_ci = [line for line in readme if "-m long" not in line]
    assert len(readme) == 3 and len(in_ci) == 2 and sorted(in_ci) == sorted(ci), (readme, ci)
