"""Rating in the browser, in headless Chromium against a real `tunehub serve` with an admin password, a rater
account and a LoRA adapter: chat and see the streamed answer, thumbs down with a reason, correct and reopen a
conversation, vote in the arena (names revealed only after the vote) and see the leaderboard change, submit
a ranking, and log in as a rater to find no admin tab. Every vote is checked through the API as well.

Run: .venv/bin/python -m pytest tests/test_ui_feedback.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.support.cli import tunehub_ok
from tests.support.server import HubProcess

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN = ("admin", "ui-admin-pw")
RATER = ("rita", "rita-pw")


@pytest.fixture(scope="module")
def ui_hub(tmp_path_factory, demo_model):
    """A hub that asks for a login, with the rater `rita` and the adapter `lora-a` loaded."""
    from tests.support.adapters import make_lora_adapter

    root = tmp_path_factory.mktemp("ui-feedback")
    adapter = make_lora_adapter(demo_model, root / "lora-a", rank=4, seed=1, scale=20.0)
    tunehub_ok("users", "add", RATER[0], "--password", RATER[1], "--data-dir", str(root / "data"))
    with HubProcess(model=demo_model, data_dir=root / "data", admin_password=ADMIN[1]) as process:
        loaded = httpx.post(
            f"{process.url}/v1/load_lora_adapter",
            json={"lora_name": "lora-a", "lora_path": str(adapter)},
            headers={"Authorization": f"Bearer {ADMIN[1]}"},
            timeout=120,
        )
        assert loaded.status_code == 200, loaded.text
        yield process


def votes_of(hub, rater: str, kind: str) -> list[dict]:
    response = httpx.get(
        f"{hub.url}/v1/feedback",
        params={"rater": rater, "type": kind},
        headers={"Authorization": f"Bearer {ADMIN[1]}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def sign_in(page, hub, user: tuple[str, str]) -> None:
    page.goto(hub.url + "/", wait_until="domcontentloaded", timeout=90_000)
    page.locator("input[type=password]").wait_for(timeout=30_000)
    page.locator("input[type=text]").first.fill(user[0])
    page.locator("input[type=password]").fill(user[1])
    page.get_by_role("button", name="Login").click()
    page.locator("#whoami").get_by_text(f"Signed in as {user[0]}").wait_for(timeout=30_000)


def chat(page, question: str) -> str:
    """Ask in the Chat tab; returns the whole answer once it is stored."""
    page.locator("#prompt textarea").fill(question)
    page.locator("#send").click()
    page.locator("#chat-status").get_by_text("stored").wait_for(timeout=60_000)
    return page.locator("#chatbot [data-testid='bot']").last.inner_text().strip()


def test_chat_streams_and_a_thumbs_down_carries_its_reason(ui_hub):
    from tests.support.browser import browser_page, tour_shot

    with browser_page(ARTIFACTS, "ui-thumbs") as page:
        sign_in(page, ui_hub, RATER)
        page.locator("#prompt textarea").fill("What is the capital of France?")
        page.locator("#send").click()
        bot = page.locator("#chatbot [data-testid='bot']").last
        bot.wait_for(timeout=30_000)
        page.locator("#chat-status").get_by_text("stored").wait_for(timeout=60_000)
        answer = bot.inner_text().strip()
        assert answer
        tour_shot(page, "1-chat")

        page.locator("#chatbot button[aria-label='Dislike']").last.click()
        page.locator("#chat-status").get_by_text("Thumbs down on answer 1 recorded").wait_for(timeout=15_000)
        page.locator("#reasons").get_by_label("wrong").check()
        page.locator("#feedback-comment textarea").fill("Paris is the capital")
        page.locator("#send-reasons").click()
        page.locator("#chat-status").get_by_text("because: wrong").wait_for(timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "ui-thumbs.png"))
        tour_shot(page, "2-rate", "#chatbot")

    [down] = votes_of(ui_hub, RATER[0], "thumbs")  # the reasons replaced the bare thumbs down
    assert (down["value"], down["reasons"], down["comment"]) == ("down", ["wrong"], "Paris is the capital")
    assert down["source"] == "ui" and down["replaces"] is not None


def test_regenerate_correct_and_reopen_a_conversation(ui_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-edit") as page:
        sign_in(page, ui_hub, ADMIN)
        page.locator("#edit-panel").first.click()  # open the correction box first, so it is on the page
        first = chat(page, "Convert 3 km to meters.")
        stored_first = page.locator("#chat-status").inner_text()
        page.locator("#regenerate").click()
        page.wait_for_function(
            "(before) => { const s = document.querySelector('#chat-status').innerText;"
            " return s.includes('stored') && s !== before; }",
            arg=stored_first,
            timeout=60_000,
        )
        page.wait_for_function(  # the new answer took the old one's place
            "() => document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length === 1", timeout=15_000
        )
        assert first

        page.wait_for_function(  # the box holds the new answer, ready to be corrected
            "() => { const box = document.querySelector('#edit-text textarea');"
            " return box && box.value.trim().length > 0; }",
            timeout=15_000,
        )
        page.locator("#edit-text textarea").fill("3 km is 3000 meters.")
        page.locator("#save-edit").click()
        page.locator("#chat-status").get_by_text("Correction saved").wait_for(timeout=15_000)

        page.locator("#new-conversation").click()
        page.wait_for_function(
            "() => !document.querySelector('#chatbot [data-testid=\"bot\"]')", timeout=15_000
        )
        page.locator("#conversations input").click()
        page.get_by_role("option", name=re.compile("Convert 3 km")).first.click()
        page.locator("#open-conversation").click()
        page.locator("#chatbot [data-testid='bot']").get_by_text("3 km is 3000 meters.").wait_for(
            timeout=15_000
        )

    [edit] = votes_of(ui_hub, ADMIN[0], "edit")
    assert edit["text"] == "3 km is 3000 meters."


def test_arena_vote_reveals_the_names_and_moves_the_leaderboard(ui_hub):
    from tests.support.browser import browser_page, tour_shot

    with browser_page(ARTIFACTS, "ui-arena") as page:
        sign_in(page, ui_hub, ADMIN)
        page.get_by_role("tab", name="Leaderboard").click()
        summary = page.locator("#lb-summary")
        summary.get_by_text(re.compile("pairwise votes|No arena votes")).wait_for(timeout=15_000)
        before = summary.inner_text()

        page.get_by_role("tab", name="Arena").click()
        page.locator("#arena-prompt textarea").fill("What is 3 + 4?")
        page.locator("#arena-send").click()
        page.locator("#arena-result").get_by_text("Which answer is better").wait_for(timeout=90_000)
        hidden = page.locator("#arena-a").inner_text() + page.locator("#arena-b").inner_text()
        assert "lora-a" not in hidden + page.locator("#arena-result").inner_text()

        page.locator("#vote-a").click()
        result = page.locator("#arena-result")
        result.get_by_text("You voted").wait_for(timeout=15_000)
        revealed = result.inner_text()
        assert "lora-a" in revealed, revealed
        page.screenshot(path=str(ARTIFACTS / "ui-arena.png"))
        tour_shot(page, "2-arena")

        page.get_by_role("tab", name="Leaderboard").click()
        page.wait_for_function(
            "(before) => document.querySelector('#lb-summary').innerText !== before",
            arg=before,
            timeout=15_000,
        )
        page.locator("#leaderboard").get_by_text("lora-a").first.wait_for(timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "ui-leaderboard.png"))

    [pairwise] = votes_of(ui_hub, ADMIN[0], "pairwise")
    assert pairwise["winner"] == "a" and pairwise["source"] == "ui"
    board = httpx.get(f"{ui_hub.url}/v1/leaderboard", headers={"Authorization": f"Bearer {ADMIN[1]}"}).json()
    assert {row["model"] for row in board["data"]} >= {"lora-a"}


def test_a_ranking_of_three_answers_is_one_vote(ui_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-rank") as page:
        sign_in(page, ui_hub, RATER)
        page.get_by_role("tab", name="Rank").click()
        page.locator("#rank-prompt textarea").fill("Reverse the word garden.")
        page.locator("#rank-sample").click()
        page.locator("#rank-status").get_by_text("Give each answer a place").wait_for(timeout=90_000)
        for answer, place in enumerate(["2", "1", "2"]):  # answer 2 best, 1 and 3 tied behind it
            page.locator(f"#rank-place-{answer}").get_by_label(place, exact=True).check()
        page.locator("#rank-submit").click()
        page.locator("#rank-status").get_by_text("Ranking saved").wait_for(timeout=15_000)
        assert "2 > 1 = 3" in page.locator("#rank-status").inner_text()

    [ranking] = votes_of(ui_hub, RATER[0], "ranking")
    best, tied = ranking["order"]
    assert isinstance(best, dict) and len(tied) == 2


def test_a_rater_finds_no_admin_tab(ui_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-rater") as page:
        sign_in(page, ui_hub, RATER)
        assert "(rater)" in page.locator("#whoami").inner_text()
        tabs = page.get_by_role("tab").all_inner_texts()
        assert {"Chat", "Arena", "Rank", "Leaderboard"} <= set(tabs) and "Data" not in tabs, tabs


def test_the_admin_sees_the_data_tab_and_downloads_an_export(ui_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-data") as page:
        sign_in(page, ui_hub, ADMIN)
        page.get_by_role("tab", name="Data").click()
        page.locator("#data-totals").get_by_text("votes").wait_for(timeout=15_000)
        page.locator("#export-kind").get_by_label("prompts").check()
        page.locator("#export-about").get_by_text("rows").wait_for(timeout=15_000)
        page.locator("#export-button").click()
        page.locator("#export-files").get_by_text(re.compile(r"prompts-trl-.*\.jsonl")).first.wait_for(
            timeout=15_000
        )
    assert list((ui_hub.data_dir / "exports").glob("prompts-trl-*.jsonl"))


def test_without_an_admin_password_the_local_user_is_admin(hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-local") as page:
        page.goto(hub.url + "/", wait_until="domcontentloaded", timeout=90_000)
        page.locator("#whoami").get_by_text("Signed in as local (admin)").wait_for(timeout=30_000)
        assert "Data" in page.get_by_role("tab").all_inner_texts()
        assert page.locator("input[type=password]").count() == 0


def test_a_follow_up_shows_whose_answer_was_kept_and_no_stale_names(ui_hub):
    """Issue 14, finding 10: after a vote for B, panel A showed B's answer as if A had given it, and the
    last pair's names stayed on the panels while a new pair answered."""
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-arena-follow-up") as page:
        sign_in(page, ui_hub, ADMIN)
        page.get_by_role("tab", name="Arena").click()
        page.locator("#arena-prompt textarea").fill("What is 2 + 2?")
        page.locator("#arena-send").click()
        page.locator("#arena-result").get_by_text("Which answer is better").wait_for(timeout=90_000)
        b_answer = page.locator("#arena-b [data-testid='bot']").last.inner_text().strip()
        page.locator("#vote-b").click()
        page.locator("#arena-result").get_by_text("You voted").wait_for(timeout=15_000)
        assert "Model A: " in page.locator("#arena-a").inner_text()  # names revealed after the vote

        page.locator("#arena-prompt textarea").fill("And 5 + 5?")
        page.locator("#arena-send").click()
        page.locator("#arena-result").get_by_text("Which answer is better").wait_for(timeout=90_000)
        for panel in ("#arena-a", "#arena-b"):
            text = page.locator(panel).inner_text()
            assert "Model A: " not in text and "Model B: " not in text, text  # no stale names
            kept = page.locator(f"{panel} [data-testid='bot']").first.inner_text()
            assert "Kept from model B" in kept and b_answer in kept, kept  # said whose answer goes on


def test_the_data_tab_offers_only_the_formats_a_dataset_can_be_written_in(ui_hub):
    """Issue 14, finding 10: pairs + alpaca could be chosen, and Export then failed with an error badge."""
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-data-formats") as page:
        sign_in(page, ui_hub, ADMIN)
        page.get_by_role("tab", name="Data").click()
        formats = page.locator("#export-format")
        formats.get_by_label("alpaca").wait_for(timeout=15_000)  # sft: every format
        page.locator("#export-kind").get_by_label("pairs").check()
        formats.get_by_label("alpaca").wait_for(state="detached", timeout=15_000)
        assert formats.get_by_label("trl").is_checked()
        assert formats.get_by_label("sharegpt").count() == 0
        page.locator("#export-kind").get_by_label("sft").check()
        formats.get_by_label("alpaca").wait_for(timeout=15_000)
