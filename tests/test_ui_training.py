"""The Train and Adapters tabs in headless Chromium against a real `tunehub serve` with an admin password:
votes are collected through the API, then the admin starts a DPO job and a KTO job on those votes from the
Train tab, watches each train and replay, compares the candidate with the base in the Adapters tab, promotes
it and chats with the other candidate; the admin also trains a tiny SFT job from a file, watches its progress
and loss, finds the adapter in the Adapters tab (and promotes it) and among the Chat tab's models; a rater
sees neither admin tab. The steps are saved as the README's guided-tour screenshots (test-artifacts/tour/).

Run: .venv/bin/python -m pytest tests/test_ui_training.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from feedback.store import Store
from tests.support.cli import tunehub_ok
from tests.support.server import HubProcess
from tests.test_training_jobs import sft_rows
from tests.test_ui_feedback import chat, sign_in

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN = ("admin", "train-admin-pw")
RATER = ("rita", "rita-pw")
# no logging_steps: a short run logs its loss at every step by default (issue 14, finding 3: a quick DPO run's
# plot stayed empty and its metrics held train_loss null while it logged every 10 steps)
TINY = {"max_steps": 6, "eval_fraction": 0, "loss_check_steps": 0, "checkpoint_steps": 0}
ON_VOTES = {**TINY, "max_steps": 4}  # a few DPO/KTO steps at the preset's lr 1e-4: barely moves, never breaks


@pytest.fixture(scope="module")
def train_hub(tmp_path_factory, demo_model):
    """A hub that asks for a login, with the rater `rita`; workers and server on one torch thread each."""
    root = tmp_path_factory.mktemp("ui-training")
    tunehub_ok("users", "add", RATER[0], "--password", RATER[1], "--data-dir", str(root / "data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # a 1M-parameter model gains nothing from more on 2 cores
        with HubProcess(model=demo_model, data_dir=root / "data", admin_password=ADMIN[1]) as process:
            yield process


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ui-training-data") / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(32)))
    return path


def set_code(page, elem_id: str, text: str) -> None:
    editor = page.locator(f"#{elem_id} .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    editor.fill(text)


def wait_text(page, selector: str, text: str, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
        arg=[selector, text],
        timeout=timeout,
    )


def choose(page, elem_id: str, option: str) -> None:
    """Pick `option` in the dropdown `elem_id` as a person does (its .input/.change events fire)."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def watch_job(page, name: str, timeout: float = 300) -> list[str]:
    """The Train tab's status line of the job training adapter `name`, each time it changed, until it ended."""
    status = page.locator("#train-job-status")
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = status.inner_text()
        if f"→ {name})" not in text:  # still the job shown before this one was queued
            page.wait_for_timeout(300)
            continue
        if not seen or seen[-1] != text:
            seen.append(text)
        if "succeeded" in text or "failed" in text or "cancelled" in text:
            break
        page.wait_for_timeout(300)
    return seen


def collect_votes(hub, prompts: int = 10) -> list[int]:
    """Pairwise votes through the API on two sampled answers to each prompt, preferring the shorter one
    (a rater's taste); returns the vote ids."""
    headers = {"Authorization": f"Bearer {ADMIN[1]}"}
    models = httpx.get(f"{hub.url}/v1/models", headers=headers, timeout=30).json()["data"]
    base = next(m["id"] for m in models if m.get("parent") is None and m["id"] != "tunehub-default")
    votes = []
    for i in range(prompts):
        completion = httpx.post(
            f"{hub.url}/v1/chat/completions",
            json={
                "model": base,
                "messages": [{"role": "user", "content": f"Convert {i % 9 + 1} km to m, please ({i})."}],
                "n": 2,
                "temperature": 1.0,
                "max_tokens": 16,
            },
            headers=headers,
            timeout=60,
        ).json()
        a, b = (c["message"]["content"] for c in completion["choices"])
        ref = {"generation_id": completion["id"]}
        vote = httpx.post(
            f"{hub.url}/v1/feedback",
            json={
                "type": "pairwise",
                "a": {**ref, "choice": 0},
                "b": {**ref, "choice": 1},
                "winner": "a" if len(a) <= len(b) else "b",
            },
            headers=headers,
            timeout=30,
        )
        assert vote.status_code == 200, vote.text
        votes.append(vote.json()["id"])
    return votes


def test_an_admin_trains_dpo_and_kto_on_the_votes_and_chats_with_the_result(train_hub):
    """Issue 4's "done when" in the browser: each stage started on the votes collected, watched, chatted with."""
    from tests.support.browser import browser_page, tour_shot

    vote_ids = collect_votes(train_hub)
    with browser_page(ARTIFACTS, "ui-train-votes") as page:
        sign_in(page, train_hub, ADMIN)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-estimate").get_by_text("lora").first.wait_for(timeout=15_000)
        # KTO with a KL bound it passes at its first evaluation: the status says it stopped early, and why
        # (issue 14, finding 8: that was visible only in the lineage JSON)
        bounded = {**ON_VOTES, "eval_fraction": 0.3, "eval_steps": 1, "max_kl": 1e-4, "learning_rate": 5e-3}
        for stage, params in (("dpo", ON_VOTES), ("kto", bounded)):
            choose(page, "train-stage", stage)
            page.locator("#train-name textarea").fill(f"ui-{stage}")
            page.locator("#train-source").get_by_label("feedback: everything").check()
            # what the stage will train on, before Start (issue 14: training visible)
            kind = {"dpo": "preference pairs", "kto": "rated answers"}[stage]
            wait_text(page, "#train-rows", f"{stage} trains on")
            rows = page.locator("#train-rows").inner_text()
            assert kind in rows and "held out" in rows and "e.g." in rows, rows
            set_code(page, "train-params", json.dumps(params))
            page.locator("#train-start").click()
            page.locator("#train-message").get_by_text(f"{stage} lora → ui-{stage}").wait_for(timeout=30_000)
            seen = watch_job(page, f"ui-{stage}")
            final = seen[-1]
            assert "succeeded" in final, "\n".join(seen)
            assert f"served as ui-{stage}" in final, final
            if stage == "dpo":
                assert "step 4/4" in final and "Stopped early" not in final, final
            else:
                assert "Stopped early at step" in final and "the KL from the base passed 0.0001" in final, (
                    final
                )
            assert f"Replay: ui-{stage}@1 accuracy" in final and "base accuracy" in final, final  # last step
            assert any("loss" in s and "succeeded" not in s for s in seen), seen
            if stage == "dpo":
                tour_shot(page, "3-retrain", "#train-jobs")

        page.get_by_role("tab", name="Adapters").click()
        wait_text(page, "#adapters-table", "ui-kto@1")
        # the pre-selected adapter's replay is shown as the tab opens (issue 14, finding 4)
        selected = page.locator("#adapters-select input").input_value()
        assert selected in ("ui-dpo@1", "ui-kto@1"), selected
        wait_text(page, "#adapters-replay-summary", selected)
        choose(page, "adapters-select", "ui-dpo@1")  # its replay is ready: nobody pressed Replay now
        wait_text(page, "#adapters-replay-summary", "ui-dpo@1")
        assert "base" in page.locator("#adapters-replay-summary").inner_text()
        wait_text(page, "#adapters-replay-table", "✗")  # the prompts answered side by side, checked
        tour_shot(page, "4-compare", "#adapters-replay-summary")
        # no votes on it yet: the rule is not met, said in words, and Promote asks to be pressed again
        # (issue 14, finding 7: it answered `not_yet` and promoted at once)
        wait_text(page, "#adapters-verdict", "ui-dpo does not meet the promotion rule yet")
        page.locator("#adapters-promote").click()
        page.locator("#adapters-message").get_by_text("Press Promote again").wait_for(timeout=60_000)
        assert "candidate" in page.locator("#adapters-table").inner_text()
        page.locator("#adapters-promote").click()
        page.locator("#adapters-message").get_by_text(
            "ui-dpo@1 promoted (against the rule, confirmed)"
        ).wait_for(timeout=60_000)
        wait_text(page, "#adapters-table", "promoted")
        tour_shot(page, "5-promote", "#adapters-table")

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Refresh models").click()
        page.get_by_label("Model").click()
        page.get_by_role("option", name="ui-kto", exact=True).click()
        assert chat(page, "Convert 7 km to m.")  # the new candidate answers, no restart
        tour_shot(page, "6-chat-candidate")

    headers = {"Authorization": f"Bearer {ADMIN[1]}"}
    with Store(train_hub.data_dir / "feedback.db") as store:
        for stage in ("dpo", "kto"):
            adapter = store.get_adapter(f"ui-{stage}")
            job = store.get_job(adapter.job_id)
            snapshot = store.get_dataset(job.dataset_id)
            assert job.stage == stage and snapshot.source == "export"
            assert job.metrics["train_loss"] is not None and job.metrics["first_loss"] is not None
            assert [step for step, _ in job.metrics["loss_curve"]][:1] == [1]  # every step, from the first
            assert set(vote_ids) <= set(snapshot.vote_ids)  # trained on the votes collected
            replay = job.metrics["replay"]
            assert replay["against"] == "base" and replay["candidate"]["name"] == f"ui-{stage}@1"
            stored = httpx.get(f"{train_hub.url}/v1/adapters/ui-{stage}/replay", headers=headers, timeout=30)
            assert stored.status_code == 200 and stored.json()["rows"], stored.text
        assert store.get_adapter("ui-dpo").status == "promoted"


def test_an_admin_trains_from_the_train_tab_and_finds_the_adapter(train_hub, sft_file):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-train") as page:
        sign_in(page, train_hub, ADMIN)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-estimate").get_by_text("lora").first.wait_for(timeout=15_000)
        choose(page, "train-stage", "sft")
        page.locator("#train-name textarea").fill("ui-km")
        page.locator("#train-source").get_by_label("file or directory").check()
        page.locator("#train-data-path textarea").fill(str(sft_file))
        set_code(page, "train-params", json.dumps({**TINY, "beta": 1}))
        page.locator("#train-start").click()  # sft has no beta: refused, naming the field
        page.get_by_text("params.beta").first.wait_for(timeout=15_000)
        set_code(page, "train-params", json.dumps(TINY))
        page.locator("#train-start").click()
        page.locator("#train-message").get_by_text("Queued").wait_for(timeout=30_000)

        seen = watch_job(page, "ui-km")
        final = seen[-1]
        assert "succeeded" in final, "\n".join(seen)
        assert "served as ui-km" in final and "step 6/6" in final, final
        assert any("loss" in s and "succeeded" not in s for s in seen), seen  # the loss shown while it ran
        assert page.locator("#train-log").inner_text().strip()
        assert page.locator("#train-loss canvas, #train-loss svg").count() > 0  # the loss curve is drawn
        page.screenshot(path=str(ARTIFACTS / "ui-train.png"), full_page=True)

        page.get_by_role("tab", name="Adapters").click()
        table = page.locator("#adapters-table")
        wait_text(page, "#adapters-table", "ui-km@1")
        assert "candidate" in table.inner_text()
        page.locator("#adapters-lineage").get_by_text('"dataset"').wait_for(timeout=15_000)
        page.locator("#adapters-promote").click()
        page.locator("#adapters-message").get_by_text("Press Promote again").wait_for(timeout=60_000)
        page.locator("#adapters-promote").click()
        page.locator("#adapters-message").get_by_text("ui-km@1 promoted").wait_for(timeout=60_000)
        wait_text(page, "#adapters-table", "promoted")
        page.screenshot(path=str(ARTIFACTS / "ui-adapters.png"), full_page=True)

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Refresh models").click()
        page.get_by_label("Model").click()
        page.get_by_role("option", name="ui-km", exact=True).wait_for(timeout=15_000)

    with Store(train_hub.data_dir / "feedback.db") as store:
        adapter = store.get_adapter("ui-km")
        job = store.get_job(adapter.job_id)
    assert adapter.status == "promoted" and job.status == "succeeded" and job.adapter == "ui-km"


def test_a_rater_sees_neither_train_nor_adapters(train_hub):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-train-rater") as page:
        sign_in(page, train_hub, RATER)
        tabs = page.get_by_role("tab").all_inner_texts()
        assert "Chat" in tabs and not {"Train", "Adapters", "Data"} & set(tabs), tabs


def test_start_training_with_nothing_changed_trains_dpo_sized_to_the_votes(train_hub):
    """Issue 13: an admin names the adapter and clicks Start training; the job trains DPO on the votes with the
    settings it chose for their number and the model, and its summary says what and why, and how well the
    result ranks held-out votes."""
    from tests.support.browser import browser_page

    collect_votes(train_hub, prompts=12)
    with browser_page(ARTIFACTS, "ui-train-defaults") as page:
        sign_in(page, train_hub, ADMIN)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-estimate").get_by_text("lora").first.wait_for(timeout=15_000)
        # nothing filled in: the auto preset leaves the numbers to the job
        assert page.locator("#train-lr input").input_value() == "0"
        page.locator("#train-name textarea").fill("ui-auto")
        page.locator("#train-start").click()
        page.locator("#train-message").get_by_text("dpo lora → ui-auto").wait_for(timeout=30_000)
        seen = watch_job(page, "ui-auto", timeout=400)
        assert "succeeded" in seen[-1], seen[-1]
        wait_text(page, "#train-job-status", "Chosen for what was left empty", timeout=30_000)
        text = page.locator("#train-job-status").inner_text()
    assert "learning_rate 0.0005" in text and "sqrt(width 128)" in text, text
    assert "max_steps 30" in text and "sft_weight 0.5" in text, text
    assert "tokens where a pair's answers differ" in text, text  # DPO's beta, sized to the votes
    with Store(train_hub.data_dir / "feedback.db") as store:
        job = next(j for j in store.list_jobs() if j.params.get("name") == "ui-auto")
    assert job.params["params"] == {"max_length": 512}  # what the form sent: nothing else
    assert job.metrics["chosen_settings"]["learning_rate"]["value"] == 0.0005
    assert 0.1 <= job.metrics["chosen_settings"]["beta"]["value"] <= 2.0
