"""The UI's Gradio queue polls gently (issue 12): Gradio looks for new events every 1 ms even when idle, which
woke an idle hub's event loop about 1,000 times a second; the hub sets longer intervals on the installed Gradio.

Run: python -m pytest tests/test_ui_queue.py -q
"""

from __future__ import annotations

import gradio as gr
import pytest

from hub.ui import PROGRESS_POLL_S, QUEUE_POLL_S, poll_gently


def test_the_installed_gradio_queue_takes_the_hubs_poll_intervals():
    with gr.Blocks() as blocks:
        gr.Markdown("x")
    blocks.queue(default_concurrency_limit=1, api_open=False)
    assert blocks._queue.sleep_when_free < QUEUE_POLL_S  # Gradio's own, which the hub replaces
    poll_gently(blocks)
    assert (blocks._queue.sleep_when_free, blocks._queue.progress_update_sleep_when_free) == (
        QUEUE_POLL_S,
        PROGRESS_POLL_S,
    )


def test_a_gradio_without_those_intervals_is_reported_not_silently_ignored():
    with gr.Blocks() as blocks:
        gr.Markdown("x")
    blocks.queue()
    del blocks._queue.sleep_when_free
    with pytest.raises(RuntimeError, match="poll intervals"):
        poll_gently(blocks)
