"""The Train and Adapters tabs in headless Chromium against a real `tunehub serve` with an admin password:
the admin starts a tiny SFT job from the Train tab, watches its progress and loss, sees it succeed, finds
the adapter in the Adapters tab (and promotes it) and among the Chat tab's models; a rater sees neither
admin tab.

Run: .venv/bin/python -m pytest tests/test_ui_training.py -q     (screenshots of failures: test-artifacts/)
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest

from feedback.store import Store
from hub.cli import main as tunehub
from tests.support.server import HubProcess
from tests.test_training_jobs import sft_rows
from tests.test_ui_feedback import sign_in

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ADMIN = ("admin", "train-admin-pw")
RATER = ("rita", "rita-pw")
TINY = {"max_steps": 6, "logging_steps": 1, "eval_fraction": 0, "loss_check_steps": 0, "checkpoint_steps": 0}


@pytest.fixture(scope="module")
def train_hub(tmp_path_factory, demo_model):
    """A hub that asks for a login, with the rater `rita`; workers and server on one torch thread each."""
    root = tmp_path_factory.mktemp("ui-training")
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            tunehub(["users", "add", RATER[0], "--password", RATER[1], "--data-dir", str(root / "data")]) == 0
        )
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


def test_an_admin_trains_from_the_train_tab_and_finds_the_adapter(train_hub, sft_file):
    from tests.support.browser import browser_page

    with browser_page(ARTIFACTS, "ui-train") as page:
        sign_in(page, train_hub, ADMIN)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-estimate").get_by_text("lora").first.wait_for(timeout=15_000)
        page.locator("#train-name textarea").fill("ui-km")
        page.locator("#train-source").get_by_label("file or directory").check()
        page.locator("#train-data-path textarea").fill(str(sft_file))
        set_code(page, "train-params", json.dumps({**TINY, "beta": 1}))
        page.locator("#train-start").click()  # sft has no beta: refused, naming the field
        page.get_by_text("params.beta").first.wait_for(timeout=15_000)
        set_code(page, "train-params", json.dumps(TINY))
        page.locator("#train-start").click()
        page.locator("#train-message").get_by_text("Queued").wait_for(timeout=30_000)

        status = page.locator("#train-job-status")
        seen, deadline = [], time.monotonic() + 300
        while time.monotonic() < deadline:
            text = status.inner_text()
            if not seen or seen[-1] != text:
                seen.append(text)
            if "succeeded" in text or "failed" in text or "cancelled" in text:
                break
            page.wait_for_timeout(300)
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
        page.locator("#adapters-message").get_by_text("ui-km@1 promoted").wait_for(timeout=15_000)
        wait_text(page, "#adapters-table", "promoted")
        page.screenshot(path=str(ARTIFACTS / "ui-adapters.png"), full_page=True)

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Refresh models").click()
        page.get_by_label("Model").click()
        page.get_by_role("option", name="ui-km").wait_for(timeout=15_000)

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
