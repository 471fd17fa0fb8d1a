"""The Chat tab: pick the base model or an adapter, set sampling, and stream answers."""

from __future__ import annotations

import gradio as gr

from serving.engine import GenerationRequest, SamplingParams
from serving.errors import EngineError

from ..service import ChatService


def message_text(content) -> str:
    """Gradio 6 gives message content as a string or a list of blocks ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(message_text(part) for part in content)
    return str(content or "")


def history_messages(history: list[dict], system: str) -> list[dict]:
    messages = [{"role": "system", "content": system.strip()}] if system.strip() else []
    messages += [{"role": m["role"], "content": message_text(m["content"])} for m in history]
    return messages


def chat_tab(service: ChatService) -> None:
    def model_choices() -> list[str]:
        return [m.id for m in service.models()]

    with gr.Row():
        model = gr.Dropdown(choices=model_choices(), value=service.engine.model_name, label="Model", scale=3)
        refresh = gr.Button("Refresh models", scale=1)
    system = gr.Textbox(label="System prompt", placeholder="optional", lines=1)
    with gr.Accordion("Sampling", open=False):
        temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
        max_tokens = gr.Slider(1, 512, value=128, step=1, label="Max new tokens")
    chatbot = gr.Chatbot(label="Conversation", height=420, feedback_options=None, elem_id="chatbot")
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5, elem_id="prompt")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
    clear = gr.Button("New conversation")

    def add_user(text: str, history: list[dict]):
        if not text.strip():
            return gr.update(), history
        return "", [*history, {"role": "user", "content": text}]

    async def answer(
        history: list[dict], model_name: str, system_prompt: str, temp: float, nucleus: float, limit: int
    ):
        if not history or history[-1]["role"] != "user":
            yield history
            return
        request = GenerationRequest(
            messages=history_messages(history, system_prompt),
            sampling=SamplingParams(max_tokens=int(limit), temperature=float(temp), top_p=float(nucleus)),
            adapter=service.adapter_for(model_name),
        )
        reply = {"role": "assistant", "content": ""}
        history = [*history, reply]
        try:
            async for _, delta in service.stream(request, source="ui"):
                reply["content"] += delta.text
                yield history
        except EngineError as exc:
            raise gr.Error(exc.message) from exc

    refresh.click(lambda: gr.update(choices=model_choices()), outputs=model)
    inputs = [chatbot, model, system, temperature, top_p, max_tokens]
    for trigger in (prompt.submit, send.click):
        trigger(add_user, [prompt, chatbot], [prompt, chatbot], queue=False).then(answer, inputs, chatbot)
    clear.click(lambda: [], outputs=chatbot, queue=False)
