"""Refresh the README's guided-tour images: the screenshots the browser tests saved to test-artifacts/tour/
are copied to docs/tour/ as palette PNGs (a few tens of KB each instead of a hundred and more).

    python -m tests.support.tour        after the browser tests ran (`make tour` runs them, then this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.browser import TOUR_DIR

REPO = Path(__file__).resolve().parents[2]
DOCS_TOUR = REPO / "docs" / "tour"
# the steps the README shows, in its order; each is saved by one browser test
STEPS: dict[str, str] = {
    "1-chat": "tests/test_ui_feedback.py",
    "2-rate": "tests/test_ui_feedback.py",
    "2-arena": "tests/test_ui_feedback.py",
    "3-retrain": "tests/test_ui_training.py",
    "4-compare": "tests/test_ui_training.py",
    "5-promote": "tests/test_ui_training.py",
    "6-chat-candidate": "tests/test_ui_training.py",
}
COLORS = 64  # Gradio's flat UI loses nothing visible at 64 colours


def refresh(
    source: Path = TOUR_DIR, target: Path = DOCS_TOUR, steps: tuple[str, ...] = tuple(STEPS)
) -> list[Path]:
    """Write `target/<step>.png` for every step from `source`; raises FileNotFoundError naming the steps
    missing there and the tests that save them."""
    from PIL import Image

    missing = [step for step in steps if not (source / f"{step}.png").is_file()]
    if missing:
        tests = sorted({STEPS.get(step, "the browser tests") for step in missing})
        raise FileNotFoundError(
            f"no screenshot of {', '.join(missing)} in {source}: run {' and '.join(tests)} first (make tour)"
        )
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for step in steps:
        with Image.open(source / f"{step}.png") as image:
            small = image.convert("RGB").quantize(colors=COLORS, method=Image.Quantize.MEDIANCUT)
        path = target / f"{step}.png"
        small.save(path, optimize=True)
        written.append(path)
    return written


def main() -> int:
    try:
        written = refresh()
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in written)
    for path in written:
        print(f"{path.relative_to(REPO)}  {path.stat().st_size // 1024} KB")
    print(f"{len(written)} images, {total // 1024} KB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
