"""The README stays true: two quick-start commands, CI runs the README's test command, every module listed,
the guided tour's pictures present and small (and `tests/support/tour.py` makes them so)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PACKAGES = ("hub", "serving", "feedback", "training", "bench")


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = re.findall(r"^    (make \w+)", section("Quick start"), flags=re.MULTILINE)
    assert commands == ["make serve", "make test"]
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
