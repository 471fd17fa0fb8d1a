"""The Data tab's vote browser (admins only): filter every vote (kind, model or adapter, rater, reason,
value, time range), page through them newest first, and open one to see its answers and their lineage
(which model, adapter version and generation produced each) and the adapters it trained. It pages with
the same service call as GET /v1/feedback (FeedbackService.search); the cursor lives in gr.State."""

from __future__ import annotations

import html

import gradio as gr

from feedback.records import Vote
from feedback.vote_search import ALL_VALUES, VoteQuery

from .login import require_admin, shown_to_user
from .services import UiServices

ANY = "any"
KINDS = (ANY, "thumbs", "pairwise", "ranking", "edit")
PAGE = 50
HEADERS = ["Vote", "Time (UTC)", "Type", "Rater", "Models", "Value", "Reasons", "Active"]


def vote_rows(votes: list[Vote], models: dict[int, list[str]]) -> list[list]:
    """The table's rows: one per vote."""

    def value(v: Vote) -> str:
        if v.kind == "ranking":
            return f"{len(v.ranking or ())} tiers"
        if v.kind == "edit":
            return "corrected"
        return v.value or ""

    return [
        [
            v.id,
            v.created_at.replace("T", " ")[:19],
            v.kind,
            v.rater,
            ", ".join(models.get(v.id, [])),
            value(v),
            ", ".join(v.tags),
            "yes" if v.active else ("withdrawn" if v.withdrawn_at else "replaced"),
        ]
        for v in votes
    ]


def detail_markdown(found: dict) -> str:
    """A vote with its answers and their lineage, and the adapters it trained, as Markdown."""
    vote: Vote = found["vote"]
    lines = [
        f"### Vote {vote.id}: {vote.kind} {vote.value or ''} by {html.escape(vote.rater)}",
        f"{vote.created_at} · source {vote.source} · conversation `{vote.conversation_id}`"
        + (f" · reasons: **{html.escape(', '.join(vote.tags))}**" if vote.tags else "")
        + (f" · comment: {html.escape(vote.comment)}" if vote.comment else "")
        + ("" if vote.active else " · **inactive**"),
    ]
    if vote.ranking:
        order = " > ".join(" = ".join(f"`{g}`" for g in tier) for tier in vote.ranking)
        lines.append(f"Ranking, best first: {order}")
    if vote.edited_text:
        lines.append(f"Corrected answer:\n\n> {html.escape(vote.edited_text)}")
    for answer in found["answers"]:
        label = "AB"[answer["position"]] if vote.kind == "pairwise" else str(answer["position"] + 1)
        adapter = answer["adapter"]
        made_by = f"model **{html.escape(answer['model'])}**"
        if adapter:
            made_by += (
                f" = adapter {adapter['id']} ({adapter['stage'] or adapter['method']} on {adapter['base']}, "
                f"{adapter['status']}; job `{adapter['job_id']}`, dataset `{adapter['dataset_id']}`"
                + (f", from {adapter['parent']}" if adapter["parent"] else "")
                + ")"
            )
        prompt = answer["prompt"][-1]["content"] if answer["prompt"] else ""
        lines.append(
            f"**Answer {label}**: {made_by} · generation `{answer['generation']}` "
            f"(response `{answer['response_id']}` choice {answer['choice']}) · {answer['created_at']}\n\n"
            f"Prompt: {html.escape(str(prompt))[:500]}\n\n> {html.escape(answer['text'])[:2000]}"
        )
    trained = found["trained_adapters"]
    lines.append(
        "Trained: " + ", ".join(f"{a['id']} ({a['status']})" for a in trained)
        if trained
        else "Trained no adapter yet."
    )
    return "\n\n".join(lines)


def vote_browser(services: UiServices) -> None:
    """The vote browser's components and events, inside the Data tab."""
    feedback, auth = services.feedback, services.auth
    gr.Markdown("### Votes")
    with gr.Row():
        kind = gr.Dropdown(list(KINDS), value=ANY, label="Type", elem_id="votes-kind")
        model = gr.Textbox(label="Model or adapter", elem_id="votes-model")
        rater = gr.Textbox(label="Rater", elem_id="votes-rater")
        reason = gr.Textbox(label="Reason", placeholder="e.g. too_long", elem_id="votes-reason")
        value = gr.Dropdown([ANY, *ALL_VALUES], value=ANY, label="Value", elem_id="votes-value")
        since = gr.Textbox(label="Since (UTC)", placeholder="2025-01-31", elem_id="votes-since")
        until = gr.Textbox(label="Until (UTC)", placeholder="2025-02-01T12:00", elem_id="votes-until")
    with gr.Row():
        search = gr.Button("Search votes", elem_id="votes-search")
        more = gr.Button("Next page", elem_id="votes-next", interactive=False)
    status = gr.Markdown(elem_id="votes-status")
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="votes-table", wrap=True)
    with gr.Row():
        vote_id = gr.Number(label="Vote id", precision=0, elem_id="votes-open-id")
        open_button = gr.Button("Open vote", elem_id="votes-open")
    detail = gr.Markdown(elem_id="votes-detail")
    # this user's query and where their next page starts: per session, never module state
    paging = gr.State(None)

    def page_of(query: VoteQuery, cursor: str | None, number: int, request: gr.Request):
        viewer = require_admin(auth, request)
        with shown_to_user():
            page = feedback.search(viewer, query, cursor=cursor, limit=PAGE)
        rows = vote_rows(page.votes, feedback.models_of(page.votes))
        first = (number - 1) * PAGE + 1
        shown = f"votes {first}–{first + len(rows) - 1}" if rows else "no votes"
        text = f"Page {number}: {shown}" + (
            " · more on the next page" if page.next_cursor else " · the last page"
        )
        state = {"query": query.__dict__, "cursor": page.next_cursor, "page": number}
        return rows, text, state, gr.update(interactive=page.next_cursor is not None)

    def search_votes(kind_, model_, rater_, reason_, value_, since_, until_, request: gr.Request):
        def given(text: str | None) -> str | None:
            return text.strip() if text and text.strip() else None

        query = VoteQuery(
            kind=None if kind_ == ANY else kind_,
            model=given(model_),
            rater=given(rater_),
            reason=given(reason_),
            value=None if value_ == ANY else value_,
            since=given(since_),
            until=given(until_),
        )
        return page_of(query, None, 1, request)

    def next_votes(state: dict | None, request: gr.Request):
        require_admin(auth, request)  # before looking at the input: a rater is refused, not told to search
        if not state or not state.get("cursor"):
            raise gr.Error("no next page: search first")
        return page_of(VoteQuery(**state["query"]), state["cursor"], state["page"] + 1, request)

    def open_vote(id: float | None, request: gr.Request):
        viewer = require_admin(auth, request)
        if id is None or id < 1:
            raise gr.Error(f"vote id {id!r} is not a vote id: give the number in the Vote column")
        with shown_to_user():
            found = feedback.vote_detail(int(id), viewer)
        return detail_markdown(found)

    page_outputs = [table, status, paging, more]
    search.click(search_votes, [kind, model, rater, reason, value, since, until], page_outputs)
    more.click(next_votes, [paging], page_outputs)
    open_button.click(open_vote, [vote_id], detail)
