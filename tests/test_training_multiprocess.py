"""A job under `accelerate launch` with two processes, on CPU (gloo), since there are no GPUs here: the same
worker and stage code a multi-GPU job runs (tests/support/accelerate_cpu2.yaml in place of a shipped GPU
config). The main process alone exports the feedback snapshot and reports progress; the job succeeds and
registers one adapter. The shipped DDP/ZeRO/FSDP configs themselves are not run here.

Run: .venv/bin/python -m pytest tests/test_training_multiprocess.py -q
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from feedback.store import Store
from training.jobs.progress import PROGRESS_FILE
from training.jobs.queue import JobQueue
from training.jobs.runner import JobRunner
from training.jobs.spec import JobSpec

pytestmark = pytest.mark.slow

CPU2 = Path(__file__).parent / "support" / "accelerate_cpu2.yaml"
TINY = {"max_steps": 4, "logging_steps": 1, "eval_fraction": 0, "loss_check_steps": 0, "checkpoint_steps": 0}


def test_a_two_process_launch_trains_once_from_one_snapshot(tmp_path, demo_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with Store(tmp_path / "feedback.db") as store:
        for km in range(1, 9):
            prompt = [{"role": "user", "content": f"Convert {km} km to m."}]
            answer = store.add_generation(
                prompt=prompt, model="base", text=f"{km} km = {km * 1000} m.", conversation_id=f"c{km}"
            )
            store.add_thumbs(answer.id, "up", rater="alice")
        spec = JobSpec(
            stage="sft", method="lora", data="feedback", name="mp", base=str(demo_model), params=TINY
        )
        job = JobQueue(store).submit(spec)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU2)]
        runner = JobRunner(store, tmp_path, worker_command=[*launch, "-m", "training.jobs.worker"])
        job = runner.run_foreground(job.id)
        assert job.status == "succeeded", job.error
        log = Path(job.log_path).read_text()
        assert "accelerate.commands.launch" in log.splitlines()[1]  # the command, at the top of the log
        events = [json.loads(line) for line in (tmp_path / "jobs" / job.id / PROGRESS_FILE).open()]
        counts = Counter(event["event"] for event in events)
        assert (
            counts["dataset"] == 1 and counts["done"] == 1 and counts["start"] == 1
        )  # the main process only
        assert [d.source for d in store.list_datasets()] == ["export"]  # one snapshot, not one per process
        [adapter] = store.list_adapters()
        assert (Path(adapter.path) / "adapter_model.safetensors").is_file()
