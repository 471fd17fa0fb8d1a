"""The README and docs/ stay true: two quick-start commands that the Makefile has, CI runs the README's test
command, every module listed, the guided tour's pictures present and small (and `tests/support/tour.py` makes
them so), the README fits on a page, every link resolves, and every command, flag and TUNEHUB_* variable is
documented in README.md or a docs/ page (issue 15)."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCUMENTED = "\n".join(page.read_text() for page in PAGES)  # "documented somewhere": the README or a page
PACKAGES = ("hub", "serving", "feedback", "training", "bench")
README_MAX_BYTES = 15_000  # issue 15: quick start, tour, features and layout; the reference lives in docs/


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = re.findall(r"^    (make \w+)", section("Quick start"), flags=re.MULTILINE)
    assert commands == ["make serve", "make test"]
    makefile_targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    assert {"serve", "test"} <= set(makefile_targets)
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)
    makefile = (REPO / "Makefile").read_text()
    # torch is installed on its own, before the project, so no CUDA build is pulled in
    assert makefile.index('pip install -q "$(TORCH)"') < makefile.index("pip install -q -e")


def test_the_layout_lists_every_module():
    layout = section("Layout")
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    modules = [Path(p) for p in tracked if p.endswith(".py") and not p.endswith("__init__.py")]
    missing = [str(p) for p in modules if not re.search(rf"(?<![\w.]){re.escape(p.name)}\b", layout)]
    assert not missing, f"README's Layout does not mention: {', '.join(missing)}"


def test_the_guided_tour_shows_every_step_from_docs_tour():
    from tests.support.tour import DOCS_TOUR, STEPS

    shown = re.findall(r"!\[[^\]]+\]\((docs/tour/[\w.-]+)\)", section("Guided tour"))
    assert shown == [f"docs/tour/{step}.png" for step in STEPS]  # every step, in order
    sizes = [(DOCS_TOUR / f"{step}.png").stat().st_size for step in STEPS]
    assert sum(sizes) < 600_000, (
        sizes
    )  # a few hundred KB in all: `python -m tests.support.tour` keeps them so


def test_the_tour_refresh_copies_each_step_as_a_small_palette_png(tmp_path):
    from PIL import Image

    from tests.support.tour import refresh

    source, target = tmp_path / "artifacts", tmp_path / "docs"
    source.mkdir()
    noisy = Image.effect_noise((1100, 750), 64).convert("RGB")  # many colours: a worst case
    noisy.save(source / "1-chat.png")
    try:
        refresh(source, target, ("1-chat", "2-rate"))
    except FileNotFoundError as e:
        assert "2-rate" in str(e) and "tests/test_ui_feedback.py" in str(e) and "1-chat," not in str(e)
    else:
        raise AssertionError("a missing step was not reported")
    [path] = refresh(source, target, ("1-chat",))
    with Image.open(path) as copy:
        assert copy.mode == "P" and copy.size == (1100, 750) and len(copy.getcolors()) <= 64


def test_the_readme_fits_on_a_page():
    size = len(README.encode())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes (at most {README_MAX_BYTES}): move reference material to a docs/ page"
    )


def without_code(markdown: str) -> str:
    """The text outside fenced code blocks and inline code, where a link is a link."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL))


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(
        r"^#+ (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL), flags=re.MULTILINE
    )
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(text)):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_file():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def tunehub_parser(monkeypatch) -> argparse.ArgumentParser:
    """The parser the `tunehub` console script builds, caught at parse_args wherever the CLI builds it."""
    entry = re.search(
        r'^tunehub = "([\w.]+):(\w+)"', (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE
    )
    module, function = entry.groups()
    main = getattr(importlib.import_module(module), function)

    def parse_args(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(_Parsed) as parsed:
        main([])
    return parsed.value.parser


def commands(parser: argparse.ArgumentParser, path: str = "tunehub"):
    """(command path, its option strings) for every command and sub-command."""
    options = [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]
    yield path, options
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}")


def test_every_command_and_flag_is_documented(monkeypatch):
    missing = []
    for path, options in commands(tunehub_parser(monkeypatch)):
        if path not in DOCUMENTED:
            missing.append(path)
        missing += [
            f"{path} {option}"
            for option in options
            if not re.search(rf"{re.escape(option)}(?![\w-])", DOCUMENTED)
        ]
    assert not missing, "not in README.md or docs/*.md: " + ", ".join(missing)


def test_every_tunehub_variable_is_documented():
    sources = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    sources += [REPO / name for name in ("Dockerfile", "docker-compose.yml", "Makefile")]
    variables = {
        v for p in sources if p.is_file() for v in re.findall(r"TUNEHUB_[A-Z0-9_]*[A-Z0-9]", p.read_text())
    }
    assert variables  # the search itself works
    missing = sorted(v for v in variables if not re.search(rf"{v}(?!\w)", DOCUMENTED))
    assert not missing, "TUNEHUB_* variables not in README.md or docs/*.md: " + ", ".join(missing)


def test_the_make_targets_and_modules_the_docs_name_exist():
    text = DOCUMENTED
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))
    unknown = sorted(
        {
            t
            for t in re.findall(r"(?:`|^ {4,})make ([a-z][\w-]*)", text, flags=re.MULTILINE)
            if t not in targets
        }
    )
    assert not unknown, f"make targets named in the docs but not in the Makefile: {unknown}"
    modules = {
        m for m in re.findall(r"python -m ([a-z_]+(?:\.[a-z_]+)+)", text) if m.split(".")[0] in PACKAGES
    }
    missing = [
        m
        for m in sorted(modules)
        if not (REPO / f"{m.replace('.', '/')}.py").is_file()
        and not (REPO / m.replace(".", "/") / "__main__.py").is_file()
    ]
    assert not missing, f"`python -m` modules named in the docs that do not exist: {missing}"
