"""The README stays true: two quick-start commands, CI runs the README's test command, every module listed."""

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
