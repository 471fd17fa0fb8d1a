"""The Rank tab: one model gives N sampled answers to one prompt; the user puts them in order (1 = best,
the same place for a tie) and submits them as one ranking."""

from __future__ import annotations

import asyncio

import gradio as gr

from feedback.validation import MAX_RANKED, MIN_RANKED
from serving.engine import SamplingParams

from .chat import picker_choices
from .login import GENERATING, admit, shown_to_user
from .services import UiServices


def tiers_from_places(generation_ids: list[str], places: list[str | None]) -> list[list[str]]:
    """Answers grouped by the place the user gave them, best place first (answers sharing one are tied)."""
    missing = [str(i + 1) for i, place in enumerate(places) if not place]
    if missing:
        raise gr.Error(f"give answer {', '.join(missing)} a place (1 is best)")
    if len(set(places)) < 2:
        raise gr.Error("every answer has the same place: put at least one ahead of another")
    by_place: dict[int, list[str]] = {}
    for generation, place in zip(generation_ids, places):
        by_place.setdefault(int(place), []).append(generation)
    return [by_place[place] for place in sorted(by_place)]


def rank_tab(services: UiServices, blocks: gr.Blocks) -> None:
    arena, feedback, auth = services.arena, services.feedback, services.auth
    base = services.chat.engine.model_name

    with gr.Row():
        model = gr.Dropdown(
            choices=picker_choices(services.chat, default=False),
            value=base,
            label="Model",
            scale=3,
            elem_id="rank-model",
        )
        count = gr.Slider(MIN_RANKED, MAX_RANKED, value=3, step=1, label="Answers", scale=2, elem_id="rank-n")
    with gr.Accordion("Sampling", open=False):
        temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
        max_tokens = gr.Slider(1, 512, value=96, step=1, label="Max new tokens")
    with gr.Row():
        prompt = gr.Textbox(
            placeholder="A prompt to rank answers to…", show_label=False, scale=5, elem_id="rank-prompt"
        )
        sample = gr.Button("Sample answers", variant="primary", scale=1, elem_id="rank-sample")
    rows, answers, places = [], [], []
    for i in range(MAX_RANKED):
        with gr.Row(visible=False) as row:
            answers.append(gr.Markdown(elem_id=f"rank-answer-{i}", container=True))
            places.append(gr.Radio(choices=[], label=f"Place of answer {i + 1}", elem_id=f"rank-place-{i}"))
        rows.append(row)
    submit = gr.Button("Submit ranking", interactive=False, elem_id="rank-submit")
    status = gr.Markdown(elem_id="rank-status")
    state = gr.State({"generation_ids": []})

    async def on_sample(
        text: str | None, model_name: str, n: float, temp: float, limit: int, request: gr.Request
    ):
        text = text or ""
        if not text.strip():
            raise gr.Error("type a prompt first")
        user = admit(auth, request)
        n = int(n)
        conversation = await asyncio.to_thread(services.conversations.start, user.name, text, kind="rank")
        sampling = SamplingParams(max_tokens=int(limit), temperature=float(temp))
        with shown_to_user():
            sampled = await arena.sample(
                [{"role": "user", "content": text}],
                model_name,
                n,
                sampling,
                rater=user.name,
                conversation_id=conversation,
            )
        choices = [str(p) for p in range(1, n + 1)]
        return (
            {"generation_ids": [generation for generation, _ in sampled]},
            *[gr.update(visible=i < n) for i in range(MAX_RANKED)],
            *[f"**Answer {i + 1}**\n\n{sampled[i][1]}" if i < n else "" for i in range(MAX_RANKED)],
            *[gr.update(choices=choices, value=None) for _ in range(MAX_RANKED)],
            gr.update(interactive=True),
            "Give each answer a place: 1 is best; give tied answers the same place.",
        )

    def on_submit(request: gr.Request, current: dict, *chosen: str | None):
        # the request comes first: Gradio injects it only among positional parameters, before *chosen
        generation_ids = current["generation_ids"]
        if not generation_ids:
            raise gr.Error("sample some answers first")
        tiers = tiers_from_places(generation_ids, list(chosen[: len(generation_ids)]))
        user = admit(auth, request)
        with shown_to_user():
            vote = feedback.store.add_ranking(tiers, rater=user.name, source="ui")
        order = " > ".join(" = ".join(str(generation_ids.index(g) + 1) for g in tier) for tier in tiers)
        return (
            {"generation_ids": []},
            gr.update(interactive=False),
            f"Ranking saved (vote {vote.id}): {order}.",
        )

    for trigger in (sample.click, prompt.submit):
        trigger(
            on_sample,
            [prompt, model, count, temperature, max_tokens],
            [state, *rows, *answers, *places, submit, status],
            **GENERATING,
        )
    submit.click(on_submit, [state, *places], [state, submit, status])

    def follow_rank_models(current: str | None):
        """The picker follows adapters loaded and unloaded since the page was drawn."""
        choices = picker_choices(services.chat, default=False)
        names = [name for _, name in choices]
        return gr.update(choices=choices, value=current if current in names else base)

    blocks.load(follow_rank_models, model, model)
    model.focus(follow_rank_models, model, model, queue=False)
