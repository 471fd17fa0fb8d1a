"""The plots of the loop (issue 16): the Leaderboard tab's ratings with 95% intervals and win-rate heatmap, and
the Adapters tab's promotions over time with rating and replay accuracy. The Vega-Lite specs and the
promotion history are checked directly; in headless Chromium against a real `tunehub serve` the plots draw
one mark per model (and per pair that met, and per promotion), and redraw after new votes and a rollback.

Run: .venv/bin/python -m pytest tests/test_ui_plots.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.leaderboard import fit_leaderboard
from feedback.store import Store
from hub.ui.charts import promotion_history, rating_intervals, win_rate_heatmap

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN = ("admin", "plots-ui-pw")
PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
# (winner, loser, how many votes): base beats km, km@v2 beats both
MATCHES = [("base", "km", 3), ("km", "base", 1), ("km@v2", "base", 4), ("km@v2", "km", 2), ("km", "km@v2", 1)]


def add_votes(store: Store, matches) -> None:
    for winner, loser, n in matches:
        for _ in range(n):
            a = store.add_generation(prompt=PROMPT, model=winner, text="4")
            b = store.add_generation(prompt=PROMPT, model=loser, text="5")
            store.add_pairwise(a.id, b.id, "a", rater="admin")


def spec(plot) -> dict:
    assert plot is not None and (plot.type, plot.chart) == ("altair", "scatter")
    return json.loads(plot.plot)


def test_rating_intervals_and_heatmap_specs_hold_every_model(tmp_path: Path):
    with Store(tmp_path / "feedback.db") as store:
        add_votes(store, MATCHES)
        board = fit_leaderboard(store.pairwise_comparisons(), anchor="base", rounds=50)
    ratings = spec(rating_intervals(board))
    assert ratings["usermeta"]["embedOptions"]["renderer"] == "svg"
    values = ratings["data"]["values"]
    assert [v["model"] for v in values] == [r.model for r in board.ratings]
    assert all(v["lower"] <= v["rating"] <= v["upper"] for v in values)
    assert [layer["mark"]["type"] for layer in ratings["layer"]] == ["rule", "point"]

    heatmap = spec(win_rate_heatmap(board))
    cells = {(v["model"], v["opponent"]): v["win_rate"] for v in heatmap["data"]["values"]}
    assert len(cells) == 6  # every ordered pair of the three models met
    assert cells["km@v2", "base"] == 1.0 and cells["base", "km@v2"] == 0.0
    assert cells["base", "km"] == 0.75 and cells["km", "base"] == 0.25
    assert heatmap["encoding"]["x"]["scale"]["domain"] == board.models


def test_no_votes_no_plots(tmp_path: Path):
    with Store(tmp_path / "feedback.db") as store:
        board = fit_leaderboard(store.pairwise_comparisons(), anchor="base", rounds=10)
    assert rating_intervals(board) is None and win_rate_heatmap(board) is None
    assert promotion_history([]) is None


def seed_promotions(store: Store, root: Path, demo_model: Path, data_dir: Path) -> None:
    """km@1 promoted, then km@2 replacing it; both replayed (accuracy 0.6 and 0.8) and rated."""
    from tests.support.adapters import make_lora_adapter

    for version, accuracy in ((1, 0.6), (2, 0.8)):
        path = make_lora_adapter(demo_model, root / f"km-v{version}", rank=4, seed=version, scale=1.0)
        store.add_adapter("km", base=str(demo_model), method="lora", path=str(path), metrics={"stage": "dpo"})
        store.promote_adapter("km", version)
        replay = data_dir / "replay" / f"km-v{version}.json"
        replay.parent.mkdir(parents=True, exist_ok=True)
        side = {"kl": 0.01, "checkable": 10, "reward": None}
        report = {  # the shape training/replay.py writes, without the answers
            "adapter": f"km@{version}",
            "against": "base",
            "candidate": {"name": f"km@{version}", "accuracy": accuracy, **side},
            "incumbent": {"name": "base", "accuracy": 0.7, **side},
            "rows": [],
        }
        replay.write_text(json.dumps(report))


def test_the_promotion_history_has_each_version_s_rating_and_replay_accuracy(tmp_path: Path, demo_model):
    from hub.adapters_service import AdapterService
    from hub.feedback_service import FeedbackService
    from hub.promotion_service import PromotionService

    data_dir = tmp_path / "data"
    with Store(data_dir / "feedback.db") as store:
        add_votes(store, MATCHES)
        seed_promotions(store, tmp_path, demo_model, data_dir)
        store.rollback_adapter()
        adapters = AdapterService(store)
        promotion = PromotionService(store, adapters, FeedbackService(store), data_dir)
        history = promotion.history()
        board = promotion.feedback.leaderboard()
    assert [(h["adapter"], h["action"], h["rated_as"]) for h in history] == [
        ("km@1", "promote", "km"),
        ("km@2", "promote", "km@v2"),
        ("km@1", "rollback", "km"),
    ]
    rated = {r.model: r for r in board.ratings}
    assert [h["accuracy"] for h in history] == [0.6, 0.8, 0.6]
    assert history[1]["rating"] == pytest.approx(rated["km@v2"].rating)
    assert history[1]["lower"] <= history[1]["rating"] <= history[1]["upper"]
    plotted = spec(promotion_history(history))
    assert [v["adapter"] for v in plotted["data"]["values"]] == ["km@1", "km@2", "km@1"]
    assert plotted["resolve"] == {"scale": {"y": "independent"}}


# ----- in the browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plots_hub(tmp_path_factory, demo_model):
    from tests.support.server import HubProcess

    root = tmp_path_factory.mktemp("ui-plots")
    data_dir = root / "data"
    with Store(data_dir / "feedback.db") as store:
        add_votes(store, MATCHES)
        seed_promotions(store, root, demo_model, data_dir)
    with HubProcess(model=demo_model, data_dir=data_dir, admin_password=ADMIN[1]) as process:
        yield process


def marks(page, selector: str) -> int:
    return page.locator(selector).count()


def wait_marks(page, selector: str, n: int, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length === n", arg=[selector, n], timeout=timeout
    )


@pytest.mark.browser
def test_the_plots_render_with_data_and_redraw_after_votes_and_a_rollback(plots_hub):
    from tests.support.browser import browser_page
    from tests.test_ui_feedback import sign_in

    # the marks of the data (role-mark), not the legend's symbols or the axes' rules
    points = "#lb-ratings svg g.role-mark.mark-symbol > path"
    intervals = "#lb-ratings svg g.role-mark.mark-rule > line"
    cells = "#winrate svg g.role-mark.mark-rect > path"
    with browser_page(ARTIFACTS, "ui-plots") as page:
        sign_in(page, plots_hub, ADMIN)
        page.get_by_role("tab", name="Leaderboard").click()
        wait_marks(page, points, 3)
        assert marks(page, intervals) == 3 and marks(page, cells) == 6
        labels = page.locator("#lb-ratings svg.marks").inner_html()
        assert all(name in labels for name in ("base", "km", "km@v2"))

        with Store(plots_hub.data_dir / "feedback.db") as store:  # a newcomer that met only the base
            add_votes(store, [("newcomer", "base", 2), ("base", "newcomer", 1)])
        page.locator("#lb-refresh").click()
        wait_marks(page, points, 4)
        wait_marks(page, cells, 8)
        assert "newcomer" in page.locator("#lb-ratings svg.marks").inner_html()
        page.screenshot(path=str(ARTIFACTS / "ui-plots-leaderboard.png"), full_page=True)

        page.get_by_role("tab", name="Adapters").click()
        history = "#adapters-promotions svg g.role-mark.mark-symbol > path"
        wait_marks(page, history, 4)  # two promotions: a rating point and an accuracy square each
        page.locator("#adapters-rollback").click()
        page.locator("#adapters-message").get_by_text("Rolled back").wait_for(timeout=30_000)
        wait_marks(page, history, 6)
        page.screenshot(path=str(ARTIFACTS / "ui-plots-adapters.png"), full_page=True)
