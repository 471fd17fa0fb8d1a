"""Limits on the UI's Gradio routes (issue 7, item 5), against a real `tunehub serve` in front of a real
`tunehub engine` (the engine in its own process, so a test can stop it with SIGSTOP and hold every
generation): the UI's generating events share the API's limit of --max-concurrent-generations running and
--max-queued-generations waiting, and the next is refused at once instead of left to hang; a rater over
--rate-limit-rater gets an error that says so and when to retry, in the same bucket as their API key.

Run: .venv/bin/python -m pytest tests/test_ui_limits.py -q   (slow: two server processes)
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import httpx
import pytest

from tests.support.engine import EngineProcess
from tests.support.gradio_api import GradioSession
from tests.support.server import HubProcess

pytestmark = pytest.mark.slow

ADMIN_PASSWORD, RATER_PASSWORD = "limits-admin", "limits-rater-pw"
LIMITS = [
    "--max-concurrent-generations", "1",
    "--max-queued-generations", "1",
    "--rate-limit-rater", "1",  # per minute: in a test, the burst is all a rater has
    "--rate-limit-burst", "2",
    "--max-body-bytes", "65536",
]  # fmt: skip


def answer_inputs(prompt: str) -> list:
    # the Chat tab's `answer`: history, session (kept by the server), model, system, temperature, top_p, max
    return [
        [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        None,
        "tunehub-default",
        "",
        0.7,
        1.0,
        16,
    ]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, demo_model):
    with EngineProcess(model=demo_model, log_path=tmp_path_factory.mktemp("ui-limits") / "engine.log") as e:
        yield e


@pytest.fixture(scope="module")
def limited_hub(tmp_path_factory, demo_model, engine):
    extra = ["--engine", "vllm", "--vllm-url", engine.url, *LIMITS]
    data_dir = tmp_path_factory.mktemp("ui-limits-hub")
    with HubProcess(
        model=demo_model, data_dir=data_dir, admin_password=ADMIN_PASSWORD, extra_args=extra
    ) as hub:
        yield hub


def rater_key(hub: HubProcess) -> str:
    """A new rater's API key (each rater has their own rate-limit bucket)."""
    from feedback.store import Store

    with Store(hub.data_dir / "feedback.db") as store:
        name = store.add_rater(f"rater-{uuid.uuid4().hex[:6]}", password=RATER_PASSWORD).name
        return store.create_api_key(name)[1]


def admin_session(hub: HubProcess) -> GradioSession:
    return GradioSession(hub.url, timeout=60).login("admin", ADMIN_PASSWORD)


def test_a_full_ui_queue_refuses_at_once_and_the_held_events_finish(limited_hub, engine):
    """One generation runs (held: the engine is stopped), one waits, the third is refused in well under a
    second with an error that says why; once the engine runs again the two accepted ones complete. Three
    different generating events (Enter, Send, Regenerate), so this holds only if they share one limit. While
    the generation queue is full, everything else still works: a new session loads its page (the load
    events are not generations) and the API is refused by the same limit. The admin is never rate limited."""
    running, waiting, refused = (admin_session(limited_hub) for _ in range(3))
    enter, send, regenerate = (running.event(name) for name in ("answer", "answer_1", "answer_2"))
    os.kill(engine.process.pid, signal.SIGSTOP)
    try:
        assert running.join(enter, answer_inputs("Tell me about Paris.")).status_code == 200
        time.sleep(1.5)  # generating, held by the stopped engine
        assert waiting.join(send, answer_inputs("And Rome?")).status_code == 200
        time.sleep(0.5)
        started = time.monotonic()
        full = refused.call(regenerate, answer_inputs("And Madrid?"))
        took = time.monotonic() - started
        assert not full.ok, full
        assert "the server is busy" in full.error and "(limits 1 and 1)" in full.error, full
        assert took < 2, f"the refusal took {took:.1f} s"

        late = admin_session(limited_hub)  # a page opened now: its load events run
        try:
            for name in ("load", "list_conversations", "follow_models_2"):
                loaded = late.call(late.event(name), late.default_inputs(late.event(name)))
                assert loaded.ok, (name, loaded)
        finally:
            late.close()
        api = httpx.post(
            f"{limited_hub.url}/v1/chat/completions",
            json={"model": "tunehub-default", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": f"Bearer {rater_key(limited_hub)}"},
            timeout=10,
        )
        assert api.status_code == 503 and api.headers["retry-after"], api.text
    finally:
        os.kill(engine.process.pid, signal.SIGCONT)
    for session in (running, waiting):
        outcome = session.outcome()
        assert outcome.ok, outcome
        shown = outcome.data[0]  # the chatbot's update: its messages and the thumbs marked on them
        assert shown["value"][-1]["role"] == "assistant"
    again = refused.call(regenerate, answer_inputs("And Madrid?"))  # room again
    assert again.ok, again
    for session in (running, waiting, refused):
        session.close()


def test_a_rater_over_the_rate_limit_gets_a_clear_error_in_the_ui(limited_hub):
    from feedback.store import Store

    with Store(limited_hub.data_dir / "feedback.db") as store:
        name = store.add_rater(f"busy-{uuid.uuid4().hex[:6]}", password=RATER_PASSWORD).name
        key = store.create_api_key(name)[1]
    ui = GradioSession(limited_hub.url, timeout=60).login(name, RATER_PASSWORD)
    try:
        first = ui.call(ui.event("answer"), answer_inputs("Hi"))  # 1 of the burst of 2
        assert first.ok, first
        liked = ui.call(
            ui.event("on_like"), [None, None], event_data={"index": 1, "value": "x", "liked": True}
        )
        assert liked.ok, liked  # 2 of 2: a vote counts like a generation
        over = ui.call(ui.event("answer"), answer_inputs("Hi again"))
        assert not over.ok and over.status == 200
        assert f"rate limit reached for rater '{name}'" in over.error and "retry in" in over.error, over
    finally:
        ui.close()
    # one bucket per rater: their API key is over the limit too
    api = httpx.get(f"{limited_hub.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert api.status_code == 429 and api.headers["retry-after"], api.text


def test_uploads_to_the_ui_are_bounded_by_the_body_limit(limited_hub):
    """The UI has no upload field, but Gradio's upload route takes files from anyone signed in: at most
    --max-body-bytes each (413 beyond), so a rater cannot fill the server's disk through it."""
    ui = admin_session(limited_hub)
    try:
        small = ui.client.post("/gradio_api/upload", files={"files": ("small.txt", b"x" * 1024)})
        assert small.status_code == 200, small.text
        large = ui.client.post("/gradio_api/upload", files={"files": ("large.bin", b"x" * 200_000)})
        assert large.status_code == 413, large.text
    finally:
        ui.close()


@pytest.mark.browser
def test_the_correction_box_is_locked_while_an_answer_streams(limited_hub, engine):
    """Held by the stopped engine, an answer is streaming: the correction box and its Save button are
    locked (what a rater typed would be overwritten as the answer ends, and the answer is not stored yet to
    be corrected). Once it ends they open again, holding the new answer; a correction saves against it."""
    from tests.support.browser import browser_page
    from tests.test_ui_feedback import ARTIFACTS, sign_in

    with browser_page(ARTIFACTS, "ui-edit-locked") as page:
        sign_in(page, limited_hub, ("admin", ADMIN_PASSWORD))
        page.locator("#edit-panel").first.click()
        box, save = page.locator("#edit-text textarea"), page.locator("#save-edit")
        assert box.is_editable() and save.is_enabled()
        os.kill(engine.process.pid, signal.SIGSTOP)
        try:
            page.locator("#prompt textarea").fill("Tell me about Paris.")
            page.locator("#send").click()
            page.locator("#stop").wait_for(timeout=15_000)  # streaming: Send gave way to Stop
            page.wait_for_function("() => document.querySelector('#save-edit').disabled", timeout=15_000)
            assert not box.is_editable() and save.is_disabled()
        finally:
            os.kill(engine.process.pid, signal.SIGCONT)
        page.locator("#chat-status").get_by_text("stored").wait_for(timeout=60_000)
        answer = page.locator("#chatbot [data-testid='bot']").last.inner_text().strip()
        box.fill("Paris is the capital of France.")  # waits until the box is editable again
        save.click()
        page.locator("#chat-status").get_by_text("Correction saved").wait_for(timeout=15_000)
        assert answer
