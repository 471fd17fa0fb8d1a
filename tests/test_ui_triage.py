"""The Data tab's vote browser and the Leaderboard's reasons in headless Chromium against a real `tunehub
serve` (issue 16, items 3 and 5): filter votes, page to the next 50, open a vote's answers and lineage; and
the top reasons per model.

Run: .venv/bin/python -m pytest tests/test_ui_triage.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.store import Store
from tests.support.server import HubProcess

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def triage_hub(tmp_path_factory, demo_model):
    """An open hub (the local user is admin) whose store holds 70 thumbs on `lora-x` (every third one
    "too long") and 5 on `base-x`."""
    data = tmp_path_factory.mktemp("ui-triage")
    with Store(data / "feedback.db") as store:
        for p in range(75):
            model = "lora-x" if p < 70 else "base-x"
            g = store.add_generation(prompt=[{"role": "user", "content": f"question {p}"}], model=model,
                                     text=f"answer number {p}")  # fmt: skip
            store.add_thumbs(g.id, "down", rater=f"rater-{p % 4}", tags=["too long"] if p % 3 == 0 else [])
    process = HubProcess(model=demo_model, data_dir=data).start(timeout=180)
    try:
        yield process
    finally:
        process.stop()


def test_the_data_tab_filters_pages_and_opens_a_vote(triage_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-triage-data") as page:
        page.goto(triage_hub.url + "/", wait_until="domcontentloaded", timeout=90_000)
        page.locator("#whoami").get_by_text("Signed in as local (admin)").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Data").click()
        page.locator("#votes-model input, #votes-model textarea").first.fill("lora-x")
        page.locator("#votes-search").click()
        status = page.locator("#votes-status")
        status.get_by_text("Page 1: votes 1–50 · more on the next page").wait_for(timeout=15_000)
        table = page.locator("#votes-table")

        def cell(row: int, column: int) -> str:
            return table.get_by_test_id(f"cell-{row}-{column}").first.inner_text().strip()

        # newest first: vote 70 is the newest on lora-x, and page 2 starts 50 votes further back
        assert (cell(0, 0), cell(0, 4)) == ("70", "lora-x") and "base-x" not in table.inner_text()
        page.locator("#votes-next").click()
        status.get_by_text("Page 2: votes 51–70 · the last page").wait_for(timeout=15_000)
        assert cell(0, 0) == "20"

        # a reason in another spelling narrows it down: every third vote
        page.locator("#votes-reason input, #votes-reason textarea").first.fill("Too Long")
        page.locator("#votes-search").click()
        status.get_by_text("Page 1: votes 1–24 · the last page").wait_for(timeout=15_000)
        assert (cell(0, 0), cell(0, 6)) == ("70", "too long")
        vote_id = "1"  # the oldest of them: question 0

        page.locator("#votes-open-id input").fill(vote_id)
        page.locator("#votes-open").click()
        detail = page.locator("#votes-detail")
        detail.get_by_text(f"Vote {vote_id}: thumbs down").wait_for(timeout=15_000)
        text = detail.inner_text()
        assert "model lora-x" in text and "generation gen-" in text and "answer number 0" in text, text
        assert "Trained no adapter yet" in text


def test_the_leaderboard_shows_the_top_reasons_per_model(triage_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-triage-reasons") as page:
        page.goto(triage_hub.url + "/", wait_until="domcontentloaded", timeout=90_000)
        page.locator("#whoami").get_by_text("Signed in as local (admin)").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Leaderboard").click()
        reasons = page.locator("#lb-reasons")
        from playwright.sync_api import expect

        expect(reasons.get_by_test_id("cell-0-1")).to_contain_text("too_long (24)", timeout=15_000)
        assert reasons.get_by_test_id("cell-0-0").inner_text().strip() == "lora-x"  # most complained-of first
