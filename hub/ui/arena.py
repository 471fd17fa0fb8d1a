"""The Arena tab: two anonymous models answer the same prompt in the same context side by side; the user
votes A, B, tie or both bad on each turn, and only then learns which models they were.

Each turn draws a fresh pair, so a revealed name never unmasks a later turn. The shared context goes on
with the preferred answer (A's on a tie or when both were bad), so both sides always answer the same
prompt, which is what makes the two answers comparable.
"""

from __future__ import annotations

import asyncio

import gradio as gr

from serving.engine import SamplingParams

from ..arena_service import Contestant, NoPair, pair_missing
from .login import GENERATING, admit, shown_to_user
from .services import UiServices

OUTCOMES = {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both are bad"}


def new_arena() -> dict:
    # battle: the current turn's contestants until its vote; context: the shared conversation so far;
    # shown: the same turns as the panels show them, each kept answer titled with the side it came from
    return {"conversation_id": None, "context": [], "shown": [], "battle": None, "answers": ("", "")}


def arena_tab(services: UiServices, blocks: gr.Blocks) -> None:
    arena, feedback, auth = services.arena, services.feedback, services.auth

    gr.Markdown(
        "Two anonymous models answer the same prompt. Vote for the better answer; "
        "the names are shown after your vote."
    )
    notice = gr.Markdown(elem_id="arena-notice")
    with gr.Row():
        chat_a = gr.Chatbot(label="Model A", height=360, elem_id="arena-a")
        chat_b = gr.Chatbot(label="Model B", height=360, elem_id="arena-b")
    with gr.Row():
        vote_buttons = [
            gr.Button("A is better", interactive=False, elem_id="vote-a"),
            gr.Button("Tie", interactive=False, elem_id="vote-tie"),
            gr.Button("Both are bad", interactive=False, elem_id="vote-both-bad"),
            gr.Button("B is better", interactive=False, elem_id="vote-b"),
        ]
    result = gr.Markdown(elem_id="arena-result")
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask both models…", show_label=False, scale=5, elem_id="arena-prompt")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
    new_battle = gr.Button("New battle", elem_id="arena-new")
    with gr.Accordion("Sampling", open=False):
        temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature")
        max_tokens = gr.Slider(1, 512, value=128, step=1, label="Max new tokens")
    state = gr.State(new_arena())
    buttons_off = [gr.update(interactive=False)] * len(vote_buttons)

    async def ask(text: str | None, current: dict, temp: float, limit: int, request: gr.Request):
        if current["battle"] is not None:
            raise gr.Error("vote on these two answers first, or start a new battle")
        text = text or ""
        if not text.strip():
            raise gr.Error("type a prompt for both models")
        user = admit(auth, request)
        try:
            a, b = arena.new_battle()
        except NoPair as exc:
            raise gr.Error(str(exc)) from None
        current = {**current}
        if current["conversation_id"] is None:
            current["conversation_id"] = await asyncio.to_thread(
                services.conversations.start, user.name, text, kind="arena"
            )
        context = [*current["context"], {"role": "user", "content": text}]
        sampling = SamplingParams(max_tokens=int(limit), temperature=float(temp))
        shown = ("", "")
        with shown_to_user():
            battle = arena.battle(
                context, (a, b), sampling, rater=user.name, conversation_id=current["conversation_id"]
            )
            earlier = [*current["shown"], {"role": "user", "content": text}]
            async for shown in battle:
                # the labels go back to "Model A/B" at once: the last pair's names belong to the last turn
                yield (
                    "",
                    gr.update(value=[*earlier, {"role": "assistant", "content": shown[0]}], label="Model A"),
                    gr.update(value=[*earlier, {"role": "assistant", "content": shown[1]}], label="Model B"),
                    current,
                    *buttons_off,
                    "",
                )
        current.update(
            context=context,
            shown=earlier,
            battle={"a": [a.model, a.generation_id], "b": [b.model, b.generation_id]},
            answers=shown,
        )
        yield (
            "",
            gr.update(label="Model A"),
            gr.update(label="Model B"),
            current,
            *[gr.update(interactive=True)] * len(vote_buttons),
            "Which answer is better? Vote to see the models' names.",
        )

    def vote(outcome: str, current: dict, request: gr.Request):
        battle = current["battle"]
        if battle is None:
            raise gr.Error("ask both models something first")
        a, b = Contestant(*battle["a"]), Contestant(*battle["b"])
        user = admit(auth, request)
        with shown_to_user():
            recorded = feedback.store.add_pairwise(
                a.generation_id, b.generation_id, outcome, rater=user.name, source="ui"
            )
        side = "B" if outcome == "b" else "A"
        kept = current["answers"][1 if outcome == "b" else 0]
        model = b.model if side == "B" else a.model
        title = f"Kept from model {side} ({model}): both models go on from this answer"
        current = {
            **current,
            "battle": None,
            "context": [*current["context"], {"role": "assistant", "content": kept}],
            "shown": [
                *current["shown"],
                {"role": "assistant", "content": kept, "metadata": {"title": title}},
            ],
        }
        message = (
            f"You voted **{OUTCOMES[outcome]}** (vote {recorded.id}). "
            f"Model A was **{a.model}**, model B was **{b.model}**. Ask a follow-up for a new pair."
        )
        return (
            current,
            gr.update(label=f"Model A: {a.model}"),
            gr.update(label=f"Model B: {b.model}"),
            *buttons_off,
            message,
        )

    def voter(outcome: str):
        def handler(current: dict, request: gr.Request):
            return vote(outcome, current, request)

        return handler

    def reset():
        return (
            new_arena(),
            gr.update(value=[], label="Model A"),
            gr.update(value=[], label="Model B"),
            *buttons_off,
            "",
        )

    turn_outputs = [prompt, chat_a, chat_b, state, *vote_buttons, result]
    for trigger in (prompt.submit, send.click):
        trigger(ask, [prompt, state, temperature, max_tokens], turn_outputs, **GENERATING)
    for button, outcome in zip(vote_buttons, ("a", "tie", "both_bad", "b")):
        button.click(voter(outcome), [state], [state, chat_a, chat_b, *vote_buttons, result])
    new_battle.click(reset, outputs=[state, chat_a, chat_b, *vote_buttons, result])

    def availability():
        """With fewer than two models there is nothing to compare: say why and what to do, lock the input."""
        models = arena.models()
        if len(models) >= 2:
            return "", gr.update(interactive=True), gr.update(interactive=True)
        return f"**{pair_missing(models)}**", gr.update(interactive=False), gr.update(interactive=False)

    blocks.load(availability, outputs=[notice, prompt, send])
