"""The Leaderboard tab: Bradley-Terry ratings from arena votes (1000 = the base model) with 95% intervals,
vote counts and provisional marks; the ratings plotted with their intervals and the observed win-rate matrix
as a heatmap (hub/ui/charts.py); the top thumbs reasons per model."""

from __future__ import annotations

import gradio as gr

from feedback.leaderboard import Leaderboard

from .charts import rating_intervals, win_rate_heatmap
from .login import shown_to_user
from .services import UiServices

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
    ratings = gr.Plot(label="Ratings with 95% intervals", show_label=False, elem_id="lb-ratings")
    heatmap = gr.Plot(label="Win-rate matrix", show_label=False, elem_id="winrate")
    refresh = gr.Button("Refresh", elem_id="lb-refresh")

    def show():
        with shown_to_user():
            board = feedback.leaderboard()
        return (
            summary(board),
            gr.update(value=board_rows(board), headers=HEADERS),
            rating_intervals(board),
            win_rate_heatmap(board),
        )

    # not on page load: over 100,000 votes a fit takes about a second
    for trigger in (refresh.click, tab.select):
        trigger(show, outputs=[text, table, ratings, heatmap])

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
