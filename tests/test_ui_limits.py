"""Limits on the UI's Gradio routes (issue 7, item 5), against a real `tunehub serve` in front of a real
`tunehub engine` (the engine in its own process, so a test can stop it with SIGSTOP and hold every
generation): the UI's queue takes at most --max-concurrent-generations generating events at once and
--max-queued-generations waiting, and refuses the next at once (503) instead of letting it hang; a rater over
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


def admin_session(hub: HubProcess) -> GradioSession:
    return GradioSession(hub.url, timeout=60).login("admin", ADMIN_PASSWORD)


def test_a_full_ui_queue_refuses_at_once_and_the_held_events_finish(limited_hub, engine):
    """One generation runs (held: the engine is stopped), one waits, the third is refused in well under a
    second; once the engine runs again the two accepted ones complete. Three different generating events
    (Enter, Send, Regenerate), so this holds only if they share one limit. The admin is never rate limited."""
    running, waiting, refused = (admin_session(limited_hub) for _ in range(3))
    enter, send, regenerate = (running.event(name) for name in ("answer", "answer_1", "answer_2"))
    os.kill(engine.process.pid, signal.SIGSTOP)
    try:
        assert running.join(enter, answer_inputs("Tell me about Paris.")).status_code == 200
        time.sleep(1.5)  # taken off the queue: generating, held by the stopped engine
        assert waiting.join(send, answer_inputs("And Rome?")).status_code == 200
        time.sleep(0.5)
        started = time.monotonic()
        full = refused.join(regenerate, answer_inputs("And Madrid?"))
        took = time.monotonic() - started
        assert full.status_code == 503, full.text
        assert "Queue is full" in full.text
        assert took < 2, f"the refusal took {took:.1f} s"
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
