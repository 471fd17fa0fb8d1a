"""The Chat tab in headless Chromium: type a question, see the streamed answer from the real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.store import Store
from hub.feedback_service import GenerationRef

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def test_chat_tab_streams_an_answer(hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "chat") as page:
        page.goto(hub.url + "/", wait_until="domcontentloaded")  # Gradio keeps a heartbeat open: never idle
        page.get_by_role("tab", name="Chat").wait_for()
        page.locator("#prompt textarea").fill("What is the capital of France?")
        page.locator("#send").click()
        bot = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']").last
        bot.wait_for(timeout=30_000)
        page.wait_for_function(
            "() => { const m = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
            " return m.length && m[m.length - 1].innerText.trim().length > 0; }",
            timeout=30_000,
        )
        first = bot.inner_text().strip()
        page.locator("#chat-status code").wait_for(timeout=60_000)
        response_id = page.locator("#chat-status code").inner_text().strip()
        answer, stable_since = first, 0
        for _ in range(100):  # until the streamed text stops growing for a second
            page.wait_for_timeout(200)
            now = bot.inner_text().strip()
            stable_since = stable_since + 1 if now == answer else 0
            answer = now
            if stable_since >= 5:
                break
        page.screenshot(path=str(ARTIFACTS / "chat.png"))
    assert answer, "the assistant's message stayed empty"
    assert answer.startswith(first)  # it grew as it streamed
    with Store(hub.data_dir / "feedback.db") as store:  # and what was shown is what was stored
        stored = store.get_generation(GenerationRef(response_id).store_id)
    assert " ".join(stored.text.split()) == " ".join(answer.split())
