"""Pictures of the loop as Vega-Lite specs for `gr.Plot`: ratings with their 95% intervals (points with
error bars, as Chatbot Arena draws them), the win-rate matrix as a heatmap, and the promotions over time.

Gradio's own plots (ScatterPlot, LinePlot, BarPlot) draw one kind of mark and no error bars or heatmap cells,
and neither matplotlib nor plotly is installed. Gradio's Plot component renders an Altair chart by handing its
Vega-Lite JSON to vega-embed in the browser; a spec written here goes the same way (``PlotData`` of type
"altair") without the altair package, themed and sized by Gradio as its own scatter plots are. The browser draws SVG (``usermeta.embedOptions``), so tests can count
the marks: one ``.mark-symbol path`` per model, one ``.mark-rect path`` per pair of models that met.
"""

from __future__ import annotations

import json
from typing import Any

from gradio.components.plot import AltairPlotData

from feedback.leaderboard import Leaderboard

VEGA_LITE = "https://vega.github.io/schema/vega-lite/v5.json"
EMBED = {"embedOptions": {"renderer": "svg", "actions": False}}
ROW_HEIGHT = 34  # pixels per model in the rating and win-rate plots
AXES_HEIGHT = 90  # the title, the x axis and its title (the height given is the whole plot's: autosize fit)


def _plot(spec: dict[str, Any]) -> AltairPlotData:
    # chart "scatter": Gradio then themes the plot (fonts, colours) and sizes it to the width of its block;
    # its theme gives every mark an accent-coloured stroke, so the marks here set their own strokes
    plot = json.dumps({"$schema": VEGA_LITE, "usermeta": EMBED, **spec})
    return AltairPlotData(type="altair", chart="scatter", plot=plot)


def rating_intervals(board: Leaderboard) -> AltairPlotData | None:
    """Each model's rating as a point on a line from the lower to the upper end of its 95% interval, best
    first; provisional models (few votes) in grey. None without ratings."""
    if not board.ratings:
        return None
    values = [
        {
            "model": r.model,
            "rating": round(r.rating, 1),
            "lower": None if r.lower is None else round(r.lower, 1),
            "upper": None if r.upper is None else round(r.upper, 1),
            "votes": r.votes,
            "status": "provisional" if r.provisional else "rated",
        }
        for r in board.ratings
    ]
    order = [r.model for r in board.ratings]
    y = {"field": "model", "type": "nominal", "sort": order, "title": None}
    x_title = "rating (1000 = " + (board.anchor or "the average model") + "), 95% interval"
    return _plot(
        {
            "height": ROW_HEIGHT * len(values) + AXES_HEIGHT,
            "title": "Ratings with 95% intervals",
            "data": {"values": values},
            "encoding": {"y": y},
            "layer": [
                {
                    "transform": [{"filter": "datum.lower != null"}],
                    "mark": {"type": "rule", "strokeWidth": 2, "stroke": "#64748b"},
                    "encoding": {
                        "x": {"field": "lower", "type": "quantitative", "scale": {"zero": False}},
                        "x2": {"field": "upper"},
                    },
                },
                {
                    "mark": {"type": "point", "filled": True, "size": 90, "strokeWidth": 0},
                    "encoding": {
                        "x": {
                            "field": "rating",
                            "type": "quantitative",
                            "scale": {"zero": False},
                            "title": x_title,
                        },
                        "color": {
                            "field": "status",
                            "type": "nominal",
                            "scale": {"domain": ["rated", "provisional"], "range": ["#2563eb", "#9ca3af"]},
                            "title": None,
                        },
                        "tooltip": [
                            {"field": "model"},
                            {"field": "rating", "type": "quantitative"},
                            {"field": "lower", "type": "quantitative", "title": "95% lower"},
                            {"field": "upper", "type": "quantitative", "title": "95% upper"},
                            {"field": "votes", "type": "quantitative"},
                            {"field": "status"},
                        ],
                    },
                },
            ],
        }
    )


def win_rate_heatmap(board: Leaderboard) -> AltairPlotData | None:
    """The observed win-rate matrix: a cell per pair of models that met, coloured red (the row model always
    lost) through yellow to green (it always won), labelled with the percentage. None under two models."""
    if len(board.models) < 2:
        return None
    values = [
        {"model": model, "opponent": opponent, "win_rate": round(rate, 4), "label": f"{rate:.0%}"}
        for model, row in zip(board.models, board.win_rate)
        for opponent, rate in zip(board.models, row)
        if rate is not None
    ]
    axis = {"type": "nominal", "sort": board.models, "scale": {"domain": board.models}}
    return _plot(
        {
            "height": ROW_HEIGHT * len(board.models) + AXES_HEIGHT + 20,
            "title": "Win rate of the row model against the column model (ties count half)",
            "data": {"values": values},
            "encoding": {
                "x": {"field": "opponent", **axis, "title": "against", "axis": {"labelAngle": -30}},
                "y": {"field": "model", **axis, "title": None},
            },
            "layer": [
                {
                    "mark": {"type": "rect", "strokeWidth": 0},
                    "encoding": {
                        "color": {
                            "field": "win_rate",
                            "type": "quantitative",
                            "scale": {"domain": [0, 1], "scheme": "redyellowgreen"},
                            "title": "win rate",
                        },
                        "tooltip": [
                            {"field": "model"},
                            {"field": "opponent", "title": "against"},
                            {"field": "label", "title": "win rate"},
                        ],
                    },
                },
                {
                    "mark": {"type": "text", "fill": "#111", "strokeWidth": 0},
                    "encoding": {"text": {"field": "label"}},
                },
            ],
        }
    )


def promotion_history(history: list[dict[str, Any]]) -> AltairPlotData | None:
    """Each promotion (and rollback) over time with the promoted version's rating (left axis, 95% interval as
    a bar) and its replay accuracy on the checkable prompts (right axis, 0-100%). None before any."""
    if not history:
        return None
    values = [
        {
            "at": h["at"],
            "adapter": h["adapter"],
            "action": h["action"],
            "rating": h.get("rating"),
            "lower": h.get("lower"),
            "upper": h.get("upper"),
            "accuracy": h.get("accuracy"),
        }
        for h in history
    ]
    x = {"field": "at", "type": "temporal", "title": "promoted at"}
    tooltip = [
        {"field": "adapter"},
        {"field": "action"},
        {"field": "at", "type": "temporal", "timeUnit": "yearmonthdatehoursminutesseconds"},
        {"field": "rating", "type": "quantitative", "format": ".0f"},
        {"field": "accuracy", "type": "quantitative", "format": ".0%", "title": "replay accuracy"},
    ]
    rating_y = {
        "field": "rating",
        "type": "quantitative",
        "scale": {"zero": False},
        "title": "rating",
        "axis": {"titleColor": "#2563eb"},
    }
    accuracy_y = {
        "field": "accuracy",
        "type": "quantitative",
        "scale": {"domain": [0, 1]},
        "title": "replay accuracy",
        "axis": {"orient": "right", "format": ".0%", "titleColor": "#ea580c"},
    }
    rated = [{"filter": "datum.rating != null"}]
    replayed = [{"filter": "datum.accuracy != null"}]
    return _plot(
        {
            "height": 300,
            "title": "Promotions over time: rating (left) and replay accuracy (right) of each promoted version",
            "data": {"values": values},
            "encoding": {"x": x},
            "layer": [
                {
                    "layer": [
                        {
                            "transform": [{"filter": "datum.lower != null"}],
                            "mark": {"type": "rule", "stroke": "#93c5fd", "strokeWidth": 2},
                            "encoding": {"y": {**rating_y, "field": "lower"}, "y2": {"field": "upper"}},
                        },
                        {
                            "transform": rated,
                            "mark": {"type": "line", "stroke": "#2563eb"},
                            "encoding": {"y": rating_y},
                        },
                        {
                            "transform": rated,
                            "mark": {
                                "type": "point",
                                "filled": True,
                                "size": 70,
                                "fill": "#2563eb",
                                "strokeWidth": 0,
                            },
                            "encoding": {"y": rating_y, "tooltip": tooltip},
                        },
                    ]
                },
                {
                    "layer": [
                        {
                            "transform": replayed,
                            "mark": {"type": "line", "stroke": "#ea580c", "strokeDash": [4, 3]},
                            "encoding": {"y": accuracy_y},
                        },
                        {
                            "transform": replayed,
                            "mark": {
                                "type": "square",
                                "filled": True,
                                "size": 70,
                                "fill": "#ea580c",
                                "strokeWidth": 0,
                            },
                            "encoding": {"y": accuracy_y, "tooltip": tooltip},
                        },
                    ]
                },
            ],
            "resolve": {"scale": {"y": "independent"}},
        }
    )
