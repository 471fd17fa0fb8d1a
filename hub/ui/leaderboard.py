"""The Leaderboard tab: Bradley-Terry ratings from arena votes (1000 = the base model) with 95% intervals,
vote counts and provisional marks, the observed win-rate matrix drawn as a heatmap, and the top thumbs
reasons per model."""

from __future__ import annotations

import html

import gradio as gr

from feedback.leaderboard import Leaderboard

from . import UiServices
from .login import shown_to_user

HEADERS = ["Rank", "Model", "Rating", "95% interval", "Votes", "Wins", "Losses", "Ties", "Both bad", "Status"]


def board_rows(board: Leaderboard) -> list[list]:
    def interval(r) -> str:
        return "–" if r.lower is None else f"{r.lower:.0f} – {r.upper:.0f}"

    return [
        [
            r.rank,
            r.model,
            round(r.rating),
            interval(r),
            r.votes,
            r.wins,
            r.losses,
            r.ties,
            r.both_bad,
            "provisional" if r.provisional else "",
        ]
        for r in board.ratings
    ]


def _cell_color(rate: float) -> str:
    # red (0) through white (0.5) to green (1)
    if rate >= 0.5:
        fade = int(255 * (1 - (rate - 0.5) * 2 * 0.65))
        return f"rgb({fade},{255 - int((255 - fade) * 0.25)},{fade})"
    fade = int(255 * (1 - (0.5 - rate) * 2 * 0.65))
    return f"rgb(255,{fade},{fade})"


def win_rate_heatmap(board: Leaderboard) -> str:
    """The observed win-rate matrix as an HTML heatmap: row model's share of wins against the column model."""
    if len(board.models) < 2:
        return "<p>The win-rate matrix needs arena votes between at least two models.</p>"
    names = [html.escape(m) for m in board.models]
    head = "".join(f"<th style='padding:4px 8px'>{n}</th>" for n in names)
    body = []
    for name, row in zip(names, board.win_rate):
        cells = []
        for rate in row:
            if rate is None:
                cells.append("<td style='padding:4px 8px;text-align:center;color:#888'>·</td>")
            else:
                style = f"padding:4px 8px;text-align:center;background:{_cell_color(rate)};color:#111"
                cells.append(f"<td style='{style}'>{rate:.0%}</td>")
        body.append(f"<tr><th style='padding:4px 8px;text-align:right'>{name}</th>{''.join(cells)}</tr>")
    return (
        "<div style='overflow-x:auto'><p><b>Win rate</b> of the row model against the column model "
        "(ties count half; · = never met)</p>"
        f"<table style='border-collapse:collapse'><tr><th></th>{head}</tr>{''.join(body)}</table></div>"
    )


def summary(board: Leaderboard) -> str:
    uncounted = (
        f" {board.n_uncounted} more {'vote compares' if board.n_uncounted == 1 else 'votes compare'} two "
        "answers of the same model and cannot rate it, so they are not counted."
        if board.n_uncounted
        else ""
    )
    if not board.ratings:
        return "No arena votes between two different models yet: vote in the Arena tab." + uncounted
    anchor = f"{board.anchor} rates 1000" if board.anchor else "the average model rates 1000"
    return (
        f"{board.n_votes} pairwise votes over {len(board.models)} models; {anchor}. "
        f"Intervals from {board.rounds} bootstrap rounds; models with few votes are provisional.{uncounted}"
    )


def leaderboard_tab(services: UiServices, blocks: gr.Blocks, tab: gr.Tab) -> None:
    feedback = services.feedback
    text = gr.Markdown(elem_id="lb-summary")
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="leaderboard", wrap=True)
    heatmap = gr.HTML(elem_id="winrate")
    refresh = gr.Button("Refresh", elem_id="lb-refresh")

    def show():
        with shown_to_user():
            board = feedback.leaderboard()
        return summary(board), gr.update(value=board_rows(board), headers=HEADERS), win_rate_heatmap(board)

    # not on page load: over 100,000 votes a fit takes about a second
    for trigger in (refresh.click, tab.select):
        trigger(show, outputs=[text, table, heatmap])

    # issue 16: the reasons raters gave with their thumbs, per model (FeedbackService.top_reasons)
    reasons = gr.Dataframe(
        headers=REASON_HEADERS,
        interactive=False,
        elem_id="lb-reasons",
        label="Top reasons per model (thumbs down and up)",
        wrap=True,
    )

    def top_reasons():
        with shown_to_user():
            table_ = feedback.top_reasons()
        return gr.update(value=reason_rows(table_), headers=REASON_HEADERS)

    for trigger in (refresh.click, tab.select):
        trigger(top_reasons, outputs=reasons)


REASON_HEADERS = ["Model", "Thumbs-down reasons", "Thumbs-up reasons"]


def reason_rows(table: list[dict]) -> list[list]:
    """Rows of the reasons table: each model's most given reasons with their counts, most complained-of
    model first."""

    def listed(pairs: list[tuple[str, int]]) -> str:
        return " · ".join(f"{reason} ({n})" for reason, n in pairs) or "–"

    return [[row["model"], listed(row["down"]), listed(row["up"])] for row in table]
