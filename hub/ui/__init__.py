"""Browser UI (Gradio Blocks) mounted at / of the hub. Tabs: Chat, Arena, Rank, Leaderboard, and Data,
Train and Adapters for admins. Handlers are thin calls into the same services the API routes use, passed in here; per-user state
lives in gr.State, and every handler learns its user from `gr.Request`.

chat.py         chat with thumbs and reasons, regenerate, corrections, one's own conversations
arena.py        two anonymous models side by side, a vote per turn, names revealed after it
rank.py         N sampled answers to one prompt, put in order, submitted as one ranking
leaderboard.py  Bradley-Terry ratings with intervals, and the win-rate matrix
data.py         counts by kind and rater, export previews and downloads (admins only)
train.py        start a training job with presets and an estimate, follow its loss and log (admins only)
adapters.py     registered adapters: status, lineage, load/unload, promote, rollback, replay (admins only)
login.py        the login, the user behind each event, the rate limit on generations and votes, the admin
                guard
services.py     UiServices: the services the tabs are given
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .services import UiServices

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["UiServices", "build_ui"]

QUEUE_POLL_S = 0.02  # how often Gradio's queue looks for a new event (its own: 0.001)
PROGRESS_POLL_S = 0.1  # how often it looks for progress to send (its own: 0.01)


def build_ui(services: UiServices) -> gr.Blocks:
    import gradio as gr

    from .adapters import adapters_tab
    from .arena import arena_tab
    from .chat import chat_tab
    from .data import data_tab
    from .leaderboard import leaderboard_tab
    from .login import on_page_load
    from .rank import rank_tab
    from .train import train_tab

    with gr.Blocks(title="tunehub") as blocks:
        with gr.Row():
            gr.Markdown("# tunehub\nChat with the base model or any loaded adapter, and rate the answers.")
            whoami = gr.Markdown(elem_id="whoami")
        with gr.Tab("Chat", id="chat") as chat:
            chat_tab(services, blocks)
        with gr.Tab("Arena", id="arena") as arena:
            arena_tab(services, blocks)
        with gr.Tab("Rank", id="rank") as rank:
            rank_tab(services, blocks)
        with gr.Tab("Leaderboard", id="leaderboard") as leaderboard:
            leaderboard_tab(services, blocks, leaderboard)
        # admin-only tabs start hidden and are shown to admins on load; their handlers check again
        with gr.Tab("Data", id="data", visible=False) as data:
            data_tab(services, blocks, data)
        with gr.Tab("Train", id="train", visible=False) as train:
            poll = train_tab(services, blocks, train)
        with gr.Tab("Adapters", id="adapters", visible=False) as adapters:
            adapters_tab(services, blocks, adapters)
        admin_tabs = [data, train, adapters]
        # the Train tab polls its jobs only while it is the tab on screen
        for tab in (chat, arena, rank, leaderboard, data, adapters):
            tab.select(lambda: gr.Timer(active=False), outputs=poll, queue=False)
        blocks.load(on_page_load(services.auth, len(admin_tabs)), outputs=[whoami, *admin_tabs])
    # api_open=False: a queued event cannot be posted to /gradio_api/run/... around the queue. No max_size:
    # generating events are bounded by the generation gate they share with the API (login.GENERATING), and
    # a cap on the whole queue would refuse page loads and votes whenever generations wait. Every other
    # event runs one at a time, Gradio's default: votes and reads take milliseconds, and admin work such as
    # a merge or a replay should not run twice at once.
    blocks.queue(default_concurrency_limit=1, api_open=False)
    poll_gently(blocks)
    return blocks


def poll_gently(blocks: gr.Blocks) -> None:
    """Gradio's queue looks for new events every 1 ms and for progress every 10 ms, also when nothing
    happens: the event loop woke about 1,000 times a second and an idle hub took 4.6% of a core (1.3% with the
    intervals below). An event now waits up to QUEUE_POLL_S before it starts, which no one sees.
    Shortcut: sets two attributes of Gradio's Queue (gradio 6.31, queueing.py), which has no setting for them."""
    queue = blocks._queue
    if not hasattr(queue, "sleep_when_free") or not hasattr(queue, "progress_update_sleep_when_free"):
        raise RuntimeError("this Gradio's queue has no poll intervals to set: check hub.ui.poll_gently")
    queue.sleep_when_free = QUEUE_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_POLL_S
