"""A full fine-tune through the whole loop without a restart (issue 17, item 2), in headless Chromium against a
real `tunehub serve`: the admin trains a full SFT job from the Train tab; it goes live as a model of its own
beside the base, is chatted with and rated in the Chat tab, replayed and promoted in the Adapters tab;
`tunehub-default` then answers with it (official `openai` client) instead of the LoRA adapter promoted
before, and a rollback through the API restores that one.

Run: .venv/bin/python -m pytest tests/test_ui_whole_model.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from feedback.store import Store
from tests.support.adapters import make_lora_adapter
from tests.support.server import HubProcess
from tests.test_training_jobs import sft_rows
from tests.test_ui_feedback import chat, sign_in
from tests.test_ui_training import choose, set_code, wait_text, watch_job

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN = ("admin", "whole-admin-pw")
# a few full-weight steps at a rate that moves the tiny model's answers to the data's format
FULL = {
    "max_steps": 6,
    "eval_fraction": 0,
    "loss_check_steps": 0,
    "checkpoint_steps": 0,
    "learning_rate": 3e-3,
}
QUESTION = "Convert 4 km to m."


@pytest.fixture(scope="module")
def whole_hub(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("ui-whole")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(32)))
    incumbent = make_lora_adapter(demo_model, root / "incumbent", rank=8, seed=3, scale=2.0)
    with Store(root / "data" / "feedback.db") as store:  # the default before: a promoted LoRA adapter
        store.add_adapter(
            "incumbent", base=str(demo_model), method="lora", path=str(incumbent), metrics={"stage": "sft"}
        )
        store.promote_adapter("incumbent", 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        with HubProcess(model=demo_model, data_dir=root / "data", admin_password=ADMIN[1]) as process:
            process.sft_file = data
            yield process


def test_a_full_fine_tune_from_the_train_tab_is_chatted_with_rated_and_promoted(whole_hub):
    import openai

    from tests.support.browser import browser_page

    client = openai.OpenAI(base_url=f"{whole_hub.url}/v1", api_key=ADMIN[1], max_retries=0)

    def answer(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16
        )
        return reply.choices[0].message.content

    base = client.models.list().data[0].id
    before = answer("tunehub-default")
    assert before == answer("incumbent") != answer(base)

    with browser_page(ARTIFACTS, "ui-whole") as page:
        sign_in(page, whole_hub, ADMIN)
        page.get_by_role("tab", name="Train").click()
        choose(page, "train-stage", "sft")
        choose(page, "train-method", "full")
        page.locator("#train-name textarea").fill("ui-whole")
        page.locator("#train-source").get_by_label("file or directory").check()
        page.locator("#train-data-path textarea").fill(str(whole_hub.sft_file))
        set_code(page, "train-params", json.dumps(FULL))
        page.locator("#train-start").click()
        page.locator("#train-message").get_by_text("Queued").wait_for(timeout=30_000)
        seen = watch_job(page, "ui-whole")
        assert "succeeded" in seen[-1] and "served as ui-whole" in seen[-1], "\n".join(seen)

        models = {m.id: m for m in client.models.list().data}
        assert models["ui-whole"].model_extra.get("parent") == base
        tuned = answer("ui-whole")
        assert tuned != before  # its own weights answer, not the base's

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Refresh models").click()
        choose(page, "chat-model", "ui-whole")
        shown = chat(page, QUESTION)
        assert shown
        page.locator("#chatbot button[aria-label='Like']").last.click()
        page.locator("#chat-status").get_by_text("Thumbs up on answer 1 recorded").wait_for(timeout=15_000)

        page.get_by_role("tab", name="Adapters").click()
        wait_text(page, "#adapters-table", "ui-whole@1")
        table = page.locator("#adapters-table").inner_text()
        assert "full" in table and "candidate" in table, table
        page.locator("#adapters-replay").click()
        wait_text(page, "#adapters-replay-summary", "ui-whole@1", timeout=120_000)
        page.locator("#adapters-override input").check()  # six steps on 32 rows: the guard may object
        page.locator("#adapters-promote").click()
        # the promotion's own message ("... is not promoted: ..." would be the guard refusing it)
        page.locator("#adapters-message").get_by_text("promoted (guard overridden)").wait_for(timeout=60_000)

    with Store(whole_hub.data_dir / "feedback.db") as store:
        assert store.promoted_adapter().ref == "ui-whole@1"
    assert answer("tunehub-default") == tuned  # the default model now answers with the full fine-tune
    back = httpx.post(
        f"{whole_hub.url}/v1/adapters/rollback", headers={"Authorization": f"Bearer {ADMIN[1]}"}, timeout=60
    )
    assert back.status_code == 200, back.text
    assert back.json()["id"] == "incumbent@1"
    assert answer("tunehub-default") == before  # the previous default again

    headers = {"Authorization": f"Bearer {ADMIN[1]}"}
    [vote] = httpx.get(
        f"{whole_hub.url}/v1/feedback", params={"type": "thumbs"}, headers=headers, timeout=30
    ).json()["data"]
    lineage = httpx.get(f"{whole_hub.url}/v1/feedback/{vote['id']}/lineage", headers=headers, timeout=30)
    [rated] = lineage.json()["answers"]  # the vote stored what the rater saw, from the model they chose
    assert rated["model"] == "ui-whole", rated
    assert rated["text"].split() == shown.split(), rated  # as drawn: the page collapses runs of spaces
    assert rated["adapter"]["id"] == "ui-whole@1" and rated["adapter"]["method"] == "full", rated
    with Store(whole_hub.data_dir / "feedback.db") as store:
        adapter = store.get_adapter("ui-whole")
    assert adapter.status == "retired"  # rolled back, as an adapter would be
    replay = json.loads((whole_hub.data_dir / "replay" / "ui-whole-v1.json").read_text())
    assert replay["adapter"] == "ui-whole@1" and replay["rows"]
