"""Headless Chromium for UI tests: Debian's chromium driven by Playwright (no browser download), and the
guided tour's screenshots (`tour_shot`), which the browser tests save to test-artifacts/tour/ as they go
(README's "Guided tour" shows copies from docs/tour/: `make tour` refreshes them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOUR_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "tour"
TOUR_VIEWPORT = {"width": 1100, "height": 750}  # small enough that the README's copies stay small

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return os.environ.get("TUNEHUB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(artifacts: Path, name: str) -> Iterator:
    """A fresh page; on failure a screenshot lands in `artifacts/<name>-failure.png`."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no chromium found: install Debian's chromium package (apt-get install chromium)")
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(artifacts / f"{name}-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def tour_shot(page, name: str, focus: str | None = None) -> Path:
    """Save one step of the guided tour as `test-artifacts/tour/<name>.png`: the viewport at 1100x750,
    scrolled so that the element `focus` (a selector) is near the top, or to the page's top without one; the
    page's size is put back after."""
    size = page.viewport_size
    page.set_viewport_size(TOUR_VIEWPORT)
    try:
        if focus is None:
            page.evaluate("scrollTo(0, 0)")
        else:
            page.locator(focus).first.evaluate(
                "e => { e.scrollIntoView({block: 'start'}); scrollBy(0, -12); }"
            )
        page.wait_for_timeout(300)  # let the relayout settle
        TOUR_DIR.mkdir(parents=True, exist_ok=True)
        path = TOUR_DIR / f"{name}.png"
        page.screenshot(path=str(path))
        return path
    finally:
        if size:
            page.set_viewport_size(size)
