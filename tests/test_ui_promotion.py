"""Promotion in headless Chromium against a real `tunehub serve` (issue 6): the Chat tab starts on
`tunehub-default`; the Adapters tab replays a broken candidate beside the base's answers, refuses to promote
it naming the accuracy drop, promotes it with the override box, and finds the adapters a vote trained.

Run: .venv/bin/python -m pytest tests/test_ui_promotion.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.store import Store
from tests.support.adapters import make_lora_adapter
from tests.support.server import HubProcess
from tests.test_ui_feedback import sign_in
from tests.test_ui_training import wait_text

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN = ("admin", "promotion-ui-pw")
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def promotion_hub(tmp_path_factory, full_demo_model):
    """The full demo model (it answers most checkable prompts, so a drop shows) with a harmless candidate
    trained on one recorded vote, and a broken one registered after it."""
    root = tmp_path_factory.mktemp("ui-promotion")
    data_dir = root / "data"
    with Store(data_dir / "feedback.db") as store:
        a = store.add_generation(prompt=PROMPT, model="base", text="Paris.")
        b = store.add_generation(prompt=PROMPT, model="base", text="Lyon.")
        vote = store.add_pairwise(a.id, b.id, "a", rater="admin")
        dataset = store.add_dataset(
            kind="pairs", format="trl", content_hash="h", n_rows=1, vote_ids=[vote.id]
        )
        # a weak reward model: its held-out accuracy shows, flagged (issue 13); its directory is not on disk,
        # so the replay does not score with it
        store.add_adapter(
            "rm",
            base=str(full_demo_model),
            method="lora",
            path=str(root / "rm-not-on-disk"),
            metrics={"stage": "reward", "heldout_accuracy": 0.55, "heldout_pairs": 20},
        )
        for name, scale in (("harmless", 0.0), ("broken", 30.0)):
            targets = ("q_proj", "k_proj", "v_proj", "o_proj")
            path = make_lora_adapter(
                full_demo_model, root / name, rank=8, seed=1, scale=scale, targets=targets
            )
            store.add_adapter(
                name,
                base=str(full_demo_model),
                method="lora",
                path=str(path),
                dataset_id=dataset.id if name == "harmless" else None,
                metrics={"stage": "dpo"},
            )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        with HubProcess(model=full_demo_model, data_dir=data_dir, admin_password=ADMIN[1]) as process:
            process.vote_id = vote.id
            yield process


def test_replay_guard_override_and_vote_lineage_in_the_adapters_tab(promotion_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-promotion") as page:
        sign_in(page, promotion_hub, ADMIN)
        assert page.get_by_label("Model").input_value().startswith("tunehub-default (now ")

        page.get_by_role("tab", name="Adapters").click()
        wait_text(page, "#adapters-table", "broken@1")  # the newest: selected
        wait_text(page, "#adapters-table", "held-out accuracy 0.55 on 20 pairs (below 0.6")
        page.locator("#adapters-replay").click()
        wait_text(page, "#adapters-replay-summary", "broken@1", timeout=120_000)
        summary = page.locator("#adapters-replay-summary").inner_text()
        assert "base" in summary and "accuracy" in summary and "KL" in summary
        wait_text(page, "#adapters-replay-table", "✗")
        # issue 16: the prompts the candidate broke, with both answers and the answers' lengths
        wait_text(page, "#adapters-replay-flips", "pass → fail")
        flips = page.locator("#adapters-replay-flips").inner_text()
        assert "Against the base" in flips and "mean answer length" in flips and " ch)" in flips

        page.locator("#adapters-promote").click()
        page.get_by_text("is not promoted: checkable accuracy fell").first.wait_for(timeout=60_000)
        page.locator("#adapters-override input").check()
        page.locator("#adapters-promote").click()
        page.locator("#adapters-message").get_by_text("guard overridden").wait_for(timeout=60_000)
        wait_text(page, "#adapters-table", "promoted")

        page.locator("#adapters-vote-id input").fill(str(promotion_hub.vote_id))
        page.locator("#adapters-vote-find").click()
        wait_text(page, "#adapters-vote-lineage", "harmless@1")
        page.screenshot(path=str(ARTIFACTS / "ui-promotion.png"), full_page=True)

    with Store(promotion_hub.data_dir / "feedback.db") as store:
        assert store.get_adapter("broken").status == "promoted"


def test_the_adapters_tab_exports_a_gguf_file(promotion_hub):
    """Issue 16: Format gguf, weights q8_0, Merge and export: the GGUF file and its Modelfile are written."""
    from tests.support.browser import browser_page

    out = promotion_hub.data_dir / "ui-gguf"
    with browser_page(ARTIFACTS, "ui-gguf-export") as page:
        sign_in(page, promotion_hub, ADMIN)
        page.get_by_role("tab", name="Adapters").click()
        wait_text(page, "#adapters-table", "harmless@1")
        page.locator("#adapters-format").get_by_label("gguf").check()
        page.locator("#adapters-quantize").get_by_label("q8_0").wait_for(timeout=15_000)  # the choices follow
        assert page.locator("#adapters-quantize").get_by_label("4bit").count() == 0
        page.locator("#adapters-quantize").get_by_label("q8_0").check()
        page.locator("#adapters-export-out textarea, #adapters-export-out input").first.fill(str(out))
        page.locator("#adapters-export").click()
        page.locator("#adapters-message").get_by_text("as GGUF (q8_0)").wait_for(timeout=120_000)
        shown = page.locator("#adapters-message").inner_text()
    (gguf,) = out.glob("*.gguf")
    assert gguf.name.endswith("-q8_0.gguf") and gguf.name in shown
    assert f"FROM ./{gguf.name}" in (out / "Modelfile").read_text()
