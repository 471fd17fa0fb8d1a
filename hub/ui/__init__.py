"""Browser UI (Gradio Blocks) mounted at / of the hub; handlers are thin calls into the service layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

    from ..service import ChatService


def build_ui(service: ChatService) -> gr.Blocks:
    import gradio as gr

    from .chat import chat_tab

    with gr.Blocks(title="tunehub") as blocks:
        gr.Markdown("# tunehub\nChat with the base model or any loaded adapter.")
        with gr.Tab("Chat"):
            chat_tab(service)
    return blocks
