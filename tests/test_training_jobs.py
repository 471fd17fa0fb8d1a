"""Training jobs end to end on a real `tunehub serve`: POST /v1/jobs queues a job that trains in its own
worker process on the tiny demo model, goes live in /v1/models under a served name and answers a chat;
cancel, kill -9 and a corrupt dataset fail or stop the job while the server keeps answering; a hub restart
mid-job resumes it from its checkpoint; an OOM retries with half the batch; only admins may touch jobs;
`tunehub train` and `tunehub jobs` work against the data dir's store.

Run: .venv/bin/python -m pytest tests/test_training_jobs.py -q   (add -m "not slow" for the quick ones)
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from feedback.store import Store
from tests.support.cli import tunehub_process
from tests.support.server import HubProcess, InProcessHub, gone
from training.jobs.faults import EXIT_OOM, Fault, diagnose, oom_retry
from training.jobs.progress import ProgressReader, write_event

TINY = {  # a few steps of LoRA SFT: seconds on the demo model
    "max_steps": 6,
    "per_device_batch_size": 4,
    "logging_steps": 1,
    "eval_fraction": 0.0,
    "loss_check_steps": 0,
    "checkpoint_steps": 0,
    "learning_rate": 3e-3,
}
LONG = {**TINY, "max_steps": 100_000}  # runs until it is stopped


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_jobs():
    """Workers and servers with one intra-op thread: a 1M-parameter model gains nothing from more, and on
    a busy 2-core machine they contend (see tests/test_training_sft.py)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


def sft_rows(n: int) -> list[dict]:
    """Short conversions the demo model's format knows: `3 km = 3000 m.`"""
    rows = []
    for i in range(n):
        km = i % 9 + 1
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Convert {km} km to m."},
                    {"role": "assistant", "content": f"{km} km = {km * 1000} m."},
                ]
            }
        )
    return rows


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("job-data") / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(48)))
    return path


@pytest.fixture(scope="module")
def jobs_hub(tmp_path_factory, demo_model, one_thread_for_jobs):
    """A hub of its own (loopback, no keys: the local user is admin), so its job queue is this module's."""
    with InProcessHub(model=demo_model, data_dir=tmp_path_factory.mktemp("jobs-hub")) as process:
        yield process


@pytest.fixture
def hub(jobs_hub):
    """The module's hub, with every job a failed test left unfinished cancelled afterwards."""
    yield jobs_hub
    for job in httpx.get(f"{jobs_hub.url}/v1/jobs", timeout=30).json()["data"]:
        if job["status"] in ("queued", "running"):
            httpx.post(f"{jobs_hub.url}/v1/jobs/{job['id']}/cancel", timeout=30)


def submit(hub, body: dict, status: int = 200, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{hub.url}/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    return response.json() if status == 200 else response.json()["error"]


def job_of(hub, job_id: str) -> dict:
    response = httpx.get(f"{hub.url}/v1/jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(hub, job_id: str, done, timeout: float = 300) -> dict:
    """Poll the job until `done(job)`; a job that ends otherwise fails the test with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_of(hub, job_id)
        if done(job):
            return job
        if job["status"] in ("succeeded", "failed", "cancelled"):
            pytest.fail(f"job ended {job['status']}: {job['error']}\n{worker_log(hub, job_id)}")
        time.sleep(0.3)
    pytest.fail(f"job {job_id} not done in {timeout}s: {job_of(hub, job_id)}\n{worker_log(hub, job_id)}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def worker_log(hub, job_id: str) -> str:
    path = hub.data_dir / "jobs" / job_id / "worker.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no worker log)"


def worker_pid(hub, job_id: str) -> int:
    return json.loads((hub.data_dir / "jobs" / job_id / "state.json").read_text())["pid"]


def chat(hub, model: str) -> str:
    response = httpx.post(
        f"{hub.url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Convert 4 km to m."}],
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


# ----- the happy path -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_trains_goes_live_as_a_candidate_and_answers(hub, sft_file):
    created = submit(
        hub, {"stage": "sft", "method": "lora", "data": str(sft_file), "name": "km", "params": TINY}
    )
    assert created["status"] == "queued" and created["progress"] == 0.0 and created["adapter"] is None
    job = wait_for(hub, created["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["adapter"] == "km"
    assert job["metrics"]["steps"] == 6 and job["metrics"]["adapter_ref"] == "km@1"
    assert len(job["metrics"]["loss_curve"]) == 6

    models = {m["id"]: m for m in httpx.get(f"{hub.url}/v1/models", timeout=30).json()["data"]}
    assert models["km"]["parent"] is not None
    assert isinstance(chat(hub, "km"), str)

    with Store(hub.data_dir / "feedback.db") as store:
        adapter = store.get_adapter("km")
        assert adapter.status == "candidate" and adapter.job_id == job["id"] and adapter.dataset_id
        assert store.get_dataset(adapter.dataset_id).source == "import"
    path = Path(adapter.path)
    assert path.parent == (hub.data_dir / "adapters" / "km").resolve()
    assert (path / "adapter_config.json").is_file() and (path / "tunehub_training.json").is_file()
    assert not (hub.data_dir / "jobs" / job["id"] / "adapter").exists()  # renamed, not copied

    # A second version from the first: a new served name (never new weights under a served one), lineage kept.
    second = submit(
        hub,
        {
            "stage": "sft",
            "data": str(sft_file),
            "name": "km",
            "parent": "km",
            "params": {**TINY, "max_steps": 2},
        },
    )
    job = wait_for(hub, second["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["adapter"] == "km@v2" and job["parent"] == "km@1"
    assert {"km", "km@v2"} <= {m["id"] for m in httpx.get(f"{hub.url}/v1/models", timeout=30).json()["data"]}
    assert isinstance(chat(hub, "km@v2"), str)
    with Store(hub.data_dir / "feedback.db") as store:
        assert store.get_adapter("km", 2).parent == "km@1"


@pytest.mark.slow
def test_feedback_data_is_exported_as_a_snapshot_and_only_new_finds_nothing_new(hub):
    base = httpx.get(f"{hub.url}/v1/models", timeout=30).json()["data"][0]["id"]
    vote_ids = []
    for km in range(1, 7):
        completion = httpx.post(
            f"{hub.url}/v1/chat/completions",
            json={
                "model": base,
                "messages": [{"role": "user", "content": f"Convert {km} km to m."}],
                "max_tokens": 12,
            },
            timeout=60,
        ).json()
        vote = httpx.post(
            f"{hub.url}/v1/feedback",
            json={"type": "thumbs", "generation": {"generation_id": completion["id"]}, "value": "up"},
            timeout=30,
        )
        assert vote.status_code == 200, vote.text
        vote_ids.append(vote.json()["id"])

    created = submit(
        hub, {"stage": "sft", "data": "feedback", "name": "liked", "params": {**TINY, "max_steps": 2}}
    )
    job = wait_for(hub, created["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    with Store(hub.data_dir / "feedback.db") as store:
        snapshot = store.get_dataset(job["dataset_id"])
        assert snapshot.source == "export" and set(vote_ids) <= set(snapshot.vote_ids)
        assert store.adapter_vote_ids("liked") == snapshot.vote_ids

    again = submit(
        hub, {"stage": "sft", "data": "feedback", "only_new": True, "name": "liked", "params": TINY}
    )
    job = wait_for(hub, again["id"], finished, timeout=120)
    assert job["status"] == "failed" and f"after vote {max(snapshot.vote_ids)}" in job["error"]


def test_a_job_whose_metrics_hold_an_infinite_loss_is_served_with_null_in_its_place(hub):
    """An evaluation stopped at the KL bound reports its loss as infinite (training.callbacks.DriftWatch), and the
    runner copies the latest evaluation into the job's metrics while it runs: the API answered 500 for the
    job, and for the list of jobs, until the next evaluation. JSON has no Infinity: it becomes null."""
    import sqlite_utils

    from training.jobs.spec import JobSpec

    job_id = "job-infinite0000000"
    metrics = {
        "eval_loss": math.inf,
        "eval_curve": [[3, 1.4], [6, math.inf]],
        "eval_base_kl": 2.3,
        "nan": math.nan,
    }
    db = sqlite_utils.Database(hub.data_dir / "feedback.db")
    db["jobs"].insert(
        {
            "id": job_id,
            "stage": "dpo",
            "method": "lora",
            "status": "failed",  # the runner starts only queued jobs: this row stays as written
            "progress": 0.5,
            "params": json.dumps(
                JobSpec(stage="dpo", method="lora", data="feedback", name="kl-stopped", base="demo").to_dict()
            ),
            "metrics": json.dumps(metrics),
            "error": "stopped",
            "created_at": "2026-12-07T00:00:00Z",
        }
    )
    db.conn.commit()
    db.close()
    one = httpx.get(f"{hub.url}/v1/jobs/{job_id}", timeout=30)
    assert one.status_code == 200, one.text
    assert one.json()["metrics"] == {
        "eval_loss": None,
        "eval_curve": [[3, 1.4], [6, None]],
        "eval_base_kl": 2.3,
        "nan": None,
    }
    listed = httpx.get(f"{hub.url}/v1/jobs", timeout=30)
    assert listed.status_code == 200, listed.text
    assert any(job["id"] == job_id and job["metrics"]["eval_loss"] is None for job in listed.json()["data"])


# ----- faults -------------------------------------------------------------------------------------------


def test_a_corrupt_dataset_fails_naming_row_and_field_and_trains_nothing(hub, tmp_path):
    rows = sft_rows(6)
    rows[2] = {"messages": [{"role": "user", "content": "Convert 3 km to m."}]}  # row 3: no reply
    data = tmp_path / "corrupt.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    created = submit(hub, {"stage": "sft", "data": str(data), "name": "corrupt", "params": TINY})
    job = wait_for(hub, created["id"], finished, timeout=120)
    assert job["status"] == "failed" and job["adapter"] is None
    assert 'row 3: field "messages"' in job["error"], job["error"]
    job_dir = hub.data_dir / "jobs" / created["id"]
    assert not (job_dir / "adapter").exists() and not list(job_dir.glob(".adapter.*"))
    assert not (hub.data_dir / "adapters" / "corrupt").exists()
    assert "Loading weights" not in worker_log(hub, created["id"])  # refused before any model loaded


@pytest.mark.slow
def test_cancel_stops_a_running_job(hub, sft_file):
    created = submit(hub, {"stage": "sft", "data": str(sft_file), "name": "cancelled", "params": LONG})
    wait_for(hub, created["id"], lambda job: job["metrics"].get("step", 0) >= 2)
    pid = worker_pid(hub, created["id"])
    response = httpx.post(f"{hub.url}/v1/jobs/{created['id']}/cancel", timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert gone(pid), "the worker is still running after the cancel"
    assert job_of(hub, created["id"])["status"] == "cancelled"
    again = httpx.post(f"{hub.url}/v1/jobs/{created['id']}/cancel", timeout=30)
    assert again.status_code == 409 and again.json()["error"]["message"].endswith("nothing to cancel")


@pytest.mark.slow
def test_kill_9_of_the_worker_fails_the_job_and_the_server_keeps_serving(hub, sft_file):
    created = submit(hub, {"stage": "sft", "data": str(sft_file), "name": "killed", "params": LONG})
    wait_for(hub, created["id"], lambda job: job["metrics"].get("step", 0) >= 1)
    os.kill(worker_pid(hub, created["id"]), signal.SIGKILL)
    job = wait_for(hub, created["id"], finished, timeout=60)
    assert job["status"] == "failed" and "killed by SIGKILL" in job["error"]
    assert httpx.get(f"{hub.url}/health", timeout=10).status_code == 200
    base = httpx.get(f"{hub.url}/v1/models", timeout=30).json()["data"][0]["id"]
    assert isinstance(chat(hub, base), str)


@pytest.mark.slow
def test_a_hub_restart_mid_job_resumes_it_from_its_checkpoint(
    demo_model, sft_file, tmp_path, one_thread_for_jobs
):
    params = {**TINY, "max_steps": 60, "checkpoint_steps": 5}
    hub = HubProcess(model=demo_model, data_dir=tmp_path / "restart-hub").start()
    try:
        created = submit(hub, {"stage": "sft", "data": str(sft_file), "name": "resumed", "params": params})
        wait_for(hub, created["id"], lambda job: job["metrics"].get("checkpoint_step", 0) >= 5)
        pid = worker_pid(hub, created["id"])
        hub.stop()
        assert gone(pid), "the hub left its worker running"
        with Store(hub.data_dir / "feedback.db") as store:
            assert store.get_job(created["id"]).status == "running"  # to resume
        hub.start()
        job = wait_for(hub, created["id"], finished)
        assert job["status"] == "succeeded", job["error"]
        assert job["metrics"]["restarts"] == 1 and job["metrics"]["resumed_from_step"] >= 5
        assert job["metrics"]["steps"] == 60 and job["adapter"] == "resumed"
        assert isinstance(chat(hub, "resumed"), str)
    finally:
        hub.stop()


def test_out_of_memory_is_told_apart_and_retried_once_with_half_the_batch():
    defaults = {"per_device_batch_size": 8, "gradient_accumulation_steps": 1}
    oom = diagnose(EXIT_OOM, {"kind": "oom", "message": "out of memory: OutOfMemoryError"}, "")
    assert oom.kind == "oom"
    assert oom_retry(oom, attempt=1, params={}, defaults=defaults) == {
        "per_device_batch_size": 4,
        "gradient_accumulation_steps": 2,
    }
    assert oom_retry(oom, attempt=2, params={}, defaults=defaults) is None  # once only
    assert oom_retry(oom, attempt=1, params={"per_device_batch_size": 1}, defaults=defaults) is None
    # An OOM seen only in the log of a worker that died without reporting counts too; a kill does not.
    assert diagnose(1, None, "torch.OutOfMemoryError: CUDA out of memory.").kind == "oom"
    killed = diagnose(-signal.SIGKILL, None, "")
    assert killed.kind == "signal" and "SIGKILL" in killed.message
    assert oom_retry(killed, attempt=1, params={}, defaults=defaults) is None
    assert oom_retry(Fault("crash", "boom"), attempt=1, params={}, defaults=defaults) is None


@pytest.mark.slow
def test_an_oom_job_retries_with_half_the_batch_and_succeeds(
    demo_model, sft_file, tmp_path, one_thread_for_jobs
):
    from training.jobs.queue import JobQueue
    from training.jobs.runner import JobRunner
    from training.jobs.spec import JobSpec

    with Store(tmp_path / "feedback.db") as store:
        spec = JobSpec(
            stage="sft",
            method="lora",
            data=str(sft_file),
            name="small-batch",
            base=str(demo_model),
            params={**TINY, "max_steps": 2, "per_device_batch_size": 8},
            foreground=True,
        )
        job = JobQueue(store).submit(spec)
        runner = JobRunner(
            store,
            tmp_path,
            worker_command=[sys.executable, "-m", "tests.support.oom_worker"],
            env={"TUNEHUB_TEST_OOM_ABOVE": "4"},
        )
        job = runner.run_foreground(job.id)
        assert job.status == "succeeded", job.error
        assert job.metrics["attempt"] == 2
        launch = json.loads((tmp_path / "jobs" / job.id / "launch.json").read_text())
        assert launch["params"]["per_device_batch_size"] == 4
        assert launch["params"]["gradient_accumulation_steps"] == 2
        assert "simulated: batch 8 > 4" in (tmp_path / "jobs" / job.id / "worker.log").read_text()

        # Still out of memory at the halved batch: failed after the one retry, with the reason.
        job = JobQueue(store).submit(
            JobSpec(**{**spec.to_dict(), "params": {**TINY, "max_steps": 2, "per_device_batch_size": 16}})
        )
        job = runner.run_foreground(job.id)
        assert job.status == "failed" and "out of memory" in job.error and job.metrics["attempt"] == 2


# A stand-in worker: "trains" instantly, writing an adapter directory and its metadata as a stage would.
INSTANT_WORKER = """
import json, sys
from pathlib import Path
from training.result import METADATA_FILE
from training.jobs.progress import PROGRESS_FILE, write_event
job_dir = Path(sys.argv[1])
out = job_dir / "adapter"
out.mkdir()
(out / "adapter_config.json").write_text("{}")
dataset = {"kind": "sft", "format": "trl", "content_hash": "h", "n_train": 1, "n_eval": 0, "path": "d"}
(out / METADATA_FILE).write_text(json.dumps({"base": "base", "method": "lora", "metrics": {}, "dataset": dataset}))
write_event(job_dir / PROGRESS_FILE, "done", output=str(out), metrics={"loss": 1.0})
"""


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_a_live_chat_adapter_is_replayed_as_the_jobs_last_step(tmp_path, sft_file, stage):
    """Issue 6: a new candidate answers the replay set once it is live, before its job reports success."""
    from training.jobs.queue import JobQueue
    from training.jobs.runner import JobRunner
    from training.jobs.spec import JobSpec

    with Store(tmp_path / "feedback.db") as store:
        seen = []

        def replay(adapter):
            job = store.get_job(adapter.job_id)
            seen.append((adapter.ref, job.status, job.adapter))
            side = {"name": adapter.ref, "accuracy": 0.5, "kl": 0.01, "checkable": 4, "perplexity": 40.5}
            incumbent = {**side, "name": "base", "perplexity": 39.5}  # a real model's replay has perplexity
            return {"against": "base", "candidate": side, "incumbent": incumbent, "rows": []}

        runner = JobRunner(
            store,
            tmp_path,
            worker_command=[sys.executable, "-c", INSTANT_WORKER],
            publish=lambda adapter: adapter.name,
            replay=replay,
        )
        spec = JobSpec(stage=stage, method="lora", data=str(sft_file), name="fast", base="base")
        job = runner.run_foreground(JobQueue(store).submit(spec).id)
        assert job.status == "succeeded", job.error
        if stage == "reward":  # a reward model scores, it does not answer: nothing to replay
            assert seen == [] and "replay" not in job.metrics
            return
        assert seen == [("fast@1", "running", "fast")]  # live (served) first, then replayed, then done
        assert job.metrics["replay"] == {
            "against": "base",
            "seconds": job.metrics["replay"]["seconds"],
            "candidate": {"name": "fast@1", "accuracy": 0.5, "kl": 0.01, "perplexity": 40.5},
            "incumbent": {"name": "base", "accuracy": 0.5, "kl": 0.01, "perplexity": 39.5},
        }
        assert "--- regression replay of fast@1" in (tmp_path / "jobs" / job.id / "worker.log").read_text()

        def broken(adapter):
            raise RuntimeError("no memory left for the replay")

        runner.replay = broken  # a failed replay is recorded; the adapter is trained and live all the same
        job = runner.run_foreground(JobQueue(store).submit(spec).id)
        assert job.status == "succeeded" and job.adapter == "fast"
        assert job.metrics["replay"] == {"error": "RuntimeError: no memory left for the replay"}

        # The hub stopped during a replay: at the next start the job is done (not trained again).
        job = JobQueue(store).submit(spec)
        store.update_job(job.id, status="running", adapter="fast@v3")
        assert runner.recover() == []
        job = store.get_job(job.id)
        assert job.status == "succeeded" and "hub stopped during the replay" in job.metrics["replay"]["error"]


def test_progress_is_read_incrementally_and_the_same_after_a_restart(tmp_path):
    path = tmp_path / "progress.jsonl"
    reader = ProgressReader(path)
    write_event(path, "launch", attempt=1, resume=False)
    write_event(path, "start", step=0, total=10)
    write_event(path, "log", step=2, loss=1.5)
    assert reader.read().fraction == pytest.approx(0.2) and reader.progress.loss == 1.5
    with path.open("a") as f:
        f.write('{"t": 1, "event": "step", "step": 4')  # half a line: waits for the rest
    assert reader.read().step == 2
    with path.open("a") as f:
        f.write(', "total": 10, "eta_s": 3.0}\n')
    write_event(path, "error", kind="oom", message="out of memory")
    progress = reader.read()
    assert progress.step == 4 and progress.eta_s == 3.0 and progress.error["kind"] == "oom"
    write_event(path, "launch", attempt=2, resume=False)  # a retry clears the last attempt's error
    assert reader.read().error is None
    fresh = ProgressReader(path).read()
    assert (fresh.step, fresh.loss_curve, fresh.error) == (4, [[2, 1.5]], None)


# ----- the API's checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"stage": "orpo"}, "stage", "stage"),
        ({"method": "nope"}, "method", "'nope' is not one of"),
        ({"name": "a b"}, "name", "not a valid adapter name"),
        ({"data": "/no/such/file.jsonl"}, "data", "neither 'feedback' nor an existing file"),
        ({"stage": "dpo", "params": {"beta": -1}}, "params.beta", "beta must be positive, got -1"),
        ({"params": {"bogus": 1}}, "params.bogus", "is not a sft setting"),
        ({"params": {"max_steps": "many"}}, "params.max_steps", "must be int"),
        ({"params": {"output_dir": "/tmp/x"}}, "params.output_dir", "cannot be set"),
        ({"parent": "nobody"}, "parent", "neither a registered adapter"),
        ({"surprise": 1}, "surprise", "unrecognized"),
    ],
)
def test_bad_job_requests_are_400_naming_the_field(hub, body, param, words):
    error = submit(hub, {"stage": "sft", "data": "feedback", "name": "x", **body}, status=400)
    assert error["param"] == param and words in error["message"], error


def test_unknown_jobs_are_404(hub):
    for response in (
        httpx.get(f"{hub.url}/v1/jobs/job-nope", timeout=30),
        httpx.post(f"{hub.url}/v1/jobs/job-nope/cancel", timeout=30),
    ):
        assert response.status_code == 404 and "job-nope" in response.json()["error"]["message"]


def test_jobs_are_for_admins_only(secured_hub, tmp_path):
    url = f"{secured_hub.url}/v1/jobs"
    body = {"stage": "sft", "data": "feedback", "name": "x"}
    assert httpx.get(url, timeout=30).status_code == 401
    for token in ("test-key",):  # the shared API key is not the admin password
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url, headers=headers, timeout=30).status_code == 403
        assert httpx.post(url, json=body, headers=headers, timeout=30).status_code == 403
        assert httpx.get(f"{url}/job-nope", headers=headers, timeout=30).status_code == 403
        assert httpx.post(f"{url}/job-nope/cancel", headers=headers, timeout=30).status_code == 403
    admin = {"Authorization": "Bearer test-admin"}
    listed = httpx.get(url, headers=admin, timeout=30)
    assert listed.status_code == 200 and listed.json()["object"] == "list"


# ----- the command line -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tunehub_train_runs_in_the_foreground_and_prints_the_adapter_dir_last(demo_model, sft_file, tmp_path):
    data_dir = tmp_path / "data"
    done = tunehub_process(
        "train", "sft", "--data", str(sft_file), "--method", "lora", "--name", "cli-km", "--base", str(demo_model),
        "--data-dir", str(data_dir), "--max-steps", "3", "--batch-size", "4",
        "--set", "logging_steps=1", "--set", "eval_fraction=0", "--set", "loss_check_steps=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    adapter_dir = Path(done.stdout.strip().splitlines()[-1])
    assert (adapter_dir / "adapter_config.json").is_file()
    assert adapter_dir.parent == (data_dir / "adapters" / "cli-km").resolve()
    with Store(data_dir / "feedback.db") as store:
        adapter = store.get_adapter("cli-km")
        job = store.get_job(adapter.job_id)
    assert adapter.path == str(adapter_dir) and job.status == "succeeded"

    listed = tunehub_process("jobs", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0 and job.id in listed.stdout and "succeeded" in listed.stdout
    shown = tunehub_process("jobs", "show", job.id, "--data-dir", str(data_dir))
    assert shown.returncode == 0 and json.loads(shown.stdout)["metrics"]["steps"] == 3
    cancelled = tunehub_process("jobs", "cancel", job.id, "--data-dir", str(data_dir))
    assert cancelled.returncode == 1 and "already succeeded" in cancelled.stderr


def test_tunehub_train_refuses_a_bad_setting_before_training(demo_model, sft_file, tmp_path):
    done = tunehub_process(
        "train", "dpo", "--data", str(sft_file), "--name", "x", "--base", str(demo_model),
        "--data-dir", str(tmp_path), "--set", "beta=-2",
    )  # fmt: skip
    assert done.returncode == 2 and "params.beta: beta must be positive, got -2" in done.stderr
    with Store(tmp_path / "feedback.db") as store:
        assert store.list_jobs() == []


def test_the_cli_knows_every_stage():
    from hub.cli.train import STAGES
    from training.jobs.spec import STAGES as SPEC_STAGES

    assert tuple(SPEC_STAGES) == STAGES
