"""The Chat tab: pick the base model or an adapter, set a system prompt and sampling, stream answers (Stop
ends one and keeps what was shown); rate them with thumbs and reasons (a second click on a thumb withdraws
it), regenerate or correct the last answer, and reopen one's own conversations with their ratings.

Per-user state lives in a gr.State: the conversation id, which stored generation each answer is, the
rater's thumb on each, the answer a reasons panel belongs to, and the answer being streamed.
"""

from __future__ import annotations

import asyncio

import gradio as gr

from feedback.connections import new_id
from feedback.errors import StoreError
from serving.engine import GenerationRequest, SamplingParams

from ..chat_service import DEFAULT_MODEL, ChatService
from ..feedback_service import THUMBS_DOWN_REASONS, THUMBS_UP_REASONS
from .login import GENERATING, admit, shown_to_user, user_of
from .services import UiServices


def message_text(content) -> str:
    """Gradio 6 gives message content as a string or a list of blocks ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(message_text(part) for part in content)
    return str(content or "")


def plain_history(history: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": message_text(m["content"])} for m in history]


def history_messages(history: list[dict], system: str) -> list[dict]:
    messages = [{"role": "system", "content": system.strip()}] if system.strip() else []
    return messages + plain_history(history)


THUMB_MARKS = {"up": "Like", "down": "Dislike"}  # a stored thumb -> the Chatbot's feedback value


def new_session() -> dict:
    # generation_ids: chatbot message index -> stored generation id; ratings: index -> "up"/"down";
    # pending: the thumb awaiting reasons; streaming: the answer being generated (for Stop)
    return {"conversation_id": None, "generation_ids": {}, "ratings": {}, "pending": None, "streaming": None}


def shown(history: list[dict], state: dict):
    """The chatbot's value with the rater's thumbs on it (Gradio drops the marks whenever the value changes)."""
    marks = [
        THUMB_MARKS.get(state["ratings"].get(index))
        for index, message in enumerate(history)
        if message["role"] == "assistant"
    ]
    return gr.update(value=history, feedback_value=marks)


def excerpt(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def conversation_choices(services: UiServices, owner: str) -> list[tuple[str, str]]:
    return [
        (f"{c.title or 'untitled'} · {c.created_at[:16].replace('T', ' ')}", c.id)
        for c in services.conversations.owned(owner)
    ]


def picker_choices(service: ChatService, *, default: bool = True) -> list[tuple[str, str]]:
    """The served models as (label, name) for a model picker; tunehub-default (unless `default` is False)
    says which model it serves now. With several base models, each base comes with the adapters and whole
    models that answer on it, labelled with it."""
    entries = [e for e in service.models() if default or e.id != DEFAULT_MODEL]
    several = len(service.base_engines()) > 1
    choices = []
    for entry in entries:
        label = entry.id
        if entry.id == DEFAULT_MODEL:
            label = f"{DEFAULT_MODEL} (now {service.adapter_for(DEFAULT_MODEL) or service.engine.model_name})"
        elif several and entry.parent is not None:
            label = f"{entry.id} (on {entry.parent})"
        choices.append((label, entry.id))
    if several:  # grouped: each base, then what answers on it
        order = {e.id: i for i, e in enumerate(entries) if e.parent is None}
        parent = {e.id: e.parent for e in entries}
        choices.sort(key=lambda c: (order.get(parent[c[1]] or c[1], len(order)), parent[c[1]] is not None))
    return choices


def chat_tab(services: UiServices, blocks: gr.Blocks) -> None:
    service, feedback, auth = services.chat, services.feedback, services.auth

    def model_choices() -> list[tuple[str, str]]:
        return picker_choices(service)

    def follow_models(current: str | None):
        """The picker follows adapters loaded, unloaded and promoted since the page was drawn."""
        choices = model_choices()
        names = [name for _, name in choices]
        return gr.update(choices=choices, value=current if current in names else DEFAULT_MODEL)

    with gr.Row():
        model = gr.Dropdown(
            choices=model_choices(), value=DEFAULT_MODEL, label="Model", scale=3, elem_id="chat-model"
        )
        refresh = gr.Button("Refresh models", scale=1)
    system = gr.Textbox(label="System prompt", placeholder="optional", lines=1)
    with gr.Accordion("Sampling", open=False):
        temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
        max_tokens = gr.Slider(1, 512, value=128, step=1, label="Max new tokens")
    with gr.Row():
        conversations = gr.Dropdown(
            choices=[],
            label="Your conversations (type to search their titles)",
            scale=4,
            elem_id="conversations",
            interactive=True,
        )
        open_button = gr.Button("Open", scale=1, elem_id="open-conversation")
        clear = gr.Button("New conversation", scale=1, elem_id="new-conversation")
    chatbot = gr.Chatbot(
        label="Conversation", height=420, feedback_options=("Like", "Dislike"), elem_id="chatbot"
    )
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5, elem_id="prompt")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id="stop")
    with gr.Row():
        regenerate = gr.Button("Regenerate the last answer", elem_id="regenerate")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Group(visible=False, elem_id="feedback-panel") as panel:
        reasons = gr.CheckboxGroup(choices=list(THUMBS_DOWN_REASONS), label="Why?", elem_id="reasons")
        comment = gr.Textbox(label="Comment", placeholder="optional", lines=1, elem_id="feedback-comment")
        send_reasons = gr.Button("Send feedback", elem_id="send-reasons")
    with gr.Accordion("Correct the last answer", open=False, elem_id="edit-panel"):
        edit_text = gr.Textbox(label="Corrected answer", lines=4, elem_id="edit-text")
        save_edit = gr.Button("Save correction", elem_id="save-edit")
    session = gr.State(new_session())

    def list_conversations(request: gr.Request):
        user = user_of(auth, request)
        return gr.update(choices=conversation_choices(services, user.name))

    def add_user(text: str | None, history: list[dict], state: dict):
        if not (text or "").strip():
            return gr.update(), gr.update()
        return "", shown([*history, {"role": "user", "content": text}], state)

    async def answer(
        history: list[dict],
        state: dict,
        model_name: str,
        system_prompt: str,
        temp: float,
        nucleus: float,
        limit: int,
        request: gr.Request,
    ):
        if not history or history[-1]["role"] != "user":
            yield gr.update(), state, gr.update(), gr.update(), gr.update()
            return
        user = admit(auth, request)
        state = {**state, "generation_ids": dict(state["generation_ids"]), "ratings": dict(state["ratings"])}
        listed = gr.update()
        if state["conversation_id"] is None:
            first = message_text(history[-1]["content"])
            state["conversation_id"] = await asyncio.to_thread(services.conversations.start, user.name, first)
            listed = gr.update(
                choices=await asyncio.to_thread(conversation_choices, services, user.name),
                value=state["conversation_id"],
            )
        request_ = GenerationRequest(
            messages=history_messages(history, system_prompt),
            sampling=SamplingParams(max_tokens=int(limit), temperature=float(temp), top_p=float(nucleus)),
            adapter=service.adapter_for(model_name),
        )
        response_id = new_id("chatcmpl")
        reply = {"role": "assistant", "content": ""}
        history = [*plain_history(history), reply]
        state["streaming"] = {"index": len(history) - 1, "response_id": response_id}
        with shown_to_user():
            stream = service.stream(
                request_,
                response_id=response_id,
                source="ui",
                rater=user.name,
                conversation_id=state["conversation_id"],
                keep_partial=True,  # Stop cancels this generator: what was shown is stored
            )
            async for _, delta in stream:
                reply["content"] += delta.text
                yield shown(history, state), state, gr.update(), listed, ""
        state["generation_ids"][len(history) - 1] = response_id  # stored before the stream's last delta
        state["streaming"] = None
        done = f"Answer `{response_id}` stored. Rate it with the thumbs, regenerate it or correct it."
        yield shown(history, state), state, reply["content"], listed, done

    def on_like(state: dict, history: list[dict], like: gr.LikeData, request: gr.Request):
        index = like.index if isinstance(like.index, int) else like.index[0]
        generation = state["generation_ids"].get(index)
        if generation is None:
            raise gr.Error("that answer is not stored: only answers given in this conversation can be rated")
        user = admit(auth, request)
        history = history or []
        ratings = dict(state["ratings"])
        which = f"answer {sum(m['role'] == 'assistant' for m in history[: index + 1])}"
        if like.liked not in (True, False):  # the same thumb clicked again: the rater takes it back
            with shown_to_user():
                vote = feedback.withdraw_thumbs(user.name, generation)
            ratings.pop(index, None)
            pending = state.get("pending")
            keep = pending is not None and pending["index"] != index
            said = f"Thumbs withdrawn from {which} (vote {vote.id})." if vote else "No thumb to withdraw."
            return (
                {**state, "ratings": ratings, "pending": pending if keep else None},
                gr.update(visible=keep),
                gr.update(),
                gr.update(),
                said,
            )
        value = "up" if like.liked else "down"
        with shown_to_user():
            vote = feedback.store.add_thumbs(generation, value, rater=user.name, source="ui")
        ratings[index] = value
        choices = THUMBS_UP_REASONS if value == "up" else THUMBS_DOWN_REASONS
        quoted = excerpt(message_text(history[index]["content"])) if index < len(history) else ""
        question = "what was good?" if value == "up" else "what was wrong?"
        return (
            {
                **state,
                "ratings": ratings,
                "pending": {"generation_id": generation, "value": value, "index": index},
            },
            gr.update(visible=True),
            gr.update(
                choices=list(choices), value=[], label=f"Thumbs {value} on {which} ({quoted!r}): {question}"
            ),
            "",
            f"Thumbs {value} on {which} recorded (vote {vote.id}). Add reasons below if you like.",
        )

    def on_reasons(state: dict, chosen: list[str], note: str, request: gr.Request):
        pending = state.get("pending")
        if pending is None:
            raise gr.Error("rate an answer with a thumb first")
        user = admit(auth, request)
        with shown_to_user():
            vote = feedback.store.add_thumbs(
                pending["generation_id"],
                pending["value"],
                rater=user.name,
                tags=chosen,
                comment=note,
                source="ui",
            )
        said = f" because: {', '.join(vote.tags)}" if vote.tags else ""
        return (
            {**state, "pending": None},
            gr.update(visible=False),
            f"Thumbs {vote.value} recorded{said} (vote {vote.id}).",
        )

    def drop_last_answer(history: list[dict], state: dict):
        if not history or history[-1]["role"] != "assistant":
            return (
                gr.update(),
                state,
                gr.update(),
                "There is no answer to regenerate yet: ask something first.",
            )
        last = len(history) - 1
        keep = {k: v for k, v in state["generation_ids"].items() if k < last}
        ratings = {k: v for k, v in state["ratings"].items() if k < last}
        pending = state.get("pending")
        if pending is not None and pending["index"] >= last:  # its answer is regenerated away
            pending = None
        state = {**state, "generation_ids": keep, "ratings": ratings, "pending": pending}
        return plain_history(history[:-1]), state, gr.update(visible=pending is not None), ""

    def on_stop():
        """Stop cancels the answer's generator (`cancels=`); the controls come back at once. The session's
        state is left alone: the generator may still yield once before the cancel reaches it."""
        return *unlocked(), "Stopping…"

    async def after_stop(state: dict, history: list[dict]):
        """The cancelled stream writes what it had shown as it closes: find it, so it can be rated."""
        streaming = state.get("streaming")
        if streaming is None:
            return gr.update(), state, "The answer had already finished."
        response_id, index = streaming["response_id"], streaming["index"]
        state = {**state, "streaming": None}
        text = message_text(history[index]["content"]) if history and index < len(history) else ""
        for _ in range(50):  # the cancelled stream holds what it had taken as it closes
            if await service.store_stopped(response_id, text):
                state["generation_ids"] = {**state["generation_ids"], index: response_id}
                said = f"Stopped. What was shown is stored as answer `{response_id}`: rate or regenerate it."
                return shown(history, state), state, said
            await asyncio.sleep(0.1)
        return gr.update(), state, "Stopped before the first word: nothing was stored."

    def on_edit(history: list[dict], state: dict, text: str, request: gr.Request):
        if not history or history[-1]["role"] != "assistant":
            raise gr.Error("there is no answer to correct yet")
        generation = state["generation_ids"].get(len(history) - 1)
        if generation is None:
            raise gr.Error("the last answer is not stored, so it cannot be corrected")
        user = admit(auth, request)
        with shown_to_user():
            vote = feedback.store.add_edit(generation, text, rater=user.name, source="ui")
        history = plain_history(history)
        history[-1] = {"role": "assistant", "content": text}  # the conversation goes on from the correction
        return shown(
            history, state
        ), f"Correction saved (vote {vote.id}); the conversation continues from it."

    def on_open(conversation_id: str | None, request: gr.Request):
        if not conversation_id:
            raise gr.Error("pick one of your conversations first")
        try:
            found = services.conversations.open(conversation_id, user_of(auth, request))
        except StoreError as exc:
            raise gr.Error(exc.message) from exc
        last = found.messages[-1]["content"] if found.messages else ""
        state = {**new_session(), "conversation_id": found.conversation_id}
        state["generation_ids"], state["ratings"] = found.generation_ids, found.ratings
        return shown(found.messages, state), found.system, state, last, ""

    def locked():
        """While an answer streams: no second question (it would split what is shown from what is stored),
        and no correction: the answer being corrected is not stored yet, and it fills the box as it ends."""
        return (
            gr.update(interactive=False),
            gr.update(visible=False),
            gr.update(visible=True),
            gr.update(interactive=False),
            gr.update(interactive=False),
            gr.update(interactive=False),
        )

    def unlocked():
        return (
            gr.update(interactive=True),
            gr.update(visible=True),
            gr.update(visible=False),
            gr.update(interactive=True),
            gr.update(interactive=True),
            gr.update(interactive=True),
        )

    controls = [prompt, send, stop, regenerate, edit_text, save_edit]
    refresh.click(follow_models, model, model)
    model.focus(follow_models, model, model, queue=False)
    inputs = [chatbot, session, model, system, temperature, top_p, max_tokens]
    outputs = [chatbot, session, edit_text, conversations, status]
    answers = []
    for trigger in (prompt.submit, send.click):
        asked = trigger(add_user, [prompt, chatbot, session], [prompt, chatbot], queue=False)
        answering = asked.then(locked, outputs=controls, queue=False).then(
            answer, inputs, outputs, **GENERATING
        )
        answering.then(unlocked, outputs=controls, queue=False)
        answers.append(answering)
    dropped = regenerate.click(
        drop_last_answer, [chatbot, session], [chatbot, session, panel, status], queue=False
    )
    regenerating = dropped.then(locked, outputs=controls, queue=False).then(
        answer, inputs, outputs, **GENERATING
    )
    regenerating.then(unlocked, outputs=controls, queue=False)
    answers.append(regenerating)
    stop.click(on_stop, None, [*controls, status], cancels=answers, queue=False).then(
        after_stop, [session, chatbot], [chatbot, session, status]
    )
    chatbot.like(on_like, [session, chatbot], [session, panel, reasons, comment, status])
    send_reasons.click(on_reasons, [session, reasons, comment], [session, panel, status])
    save_edit.click(on_edit, [chatbot, session, edit_text], [chatbot, status])
    open_button.click(on_open, [conversations], [chatbot, system, session, edit_text, status])
    clear.click(
        lambda: ([], new_session(), "", gr.update(visible=False), gr.update(value=None)),
        outputs=[chatbot, session, status, panel, conversations],
        queue=False,
    )
    blocks.load(list_conversations, outputs=conversations)
    blocks.load(follow_models, model, model)
