"""One GPU for serving and training: vLLM sleeps while jobs run and wakes before their adapters go live."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from feedback.store import Store
from hub.gpu_share import SleepingEngineLease, engine_lease, job_leases
from serving.vllm import VLLMEngine
from tests.support.engine import EngineProcess
from training.jobs.queue import JobQueue
from training.jobs.runner import JobRunner
from training.jobs.spec import JobSpec


class RecordingLease:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.asleep = False

    def acquire(self) -> None:
        self.asleep = True
        self.events.append("sleep")

    def release(self) -> None:
        self.asleep = False
        self.events.append("wake")


def test_the_runner_puts_the_engine_to_sleep_for_each_job_and_wakes_it_before_finishing(tmp_path, demo_model):
    data = tmp_path / "sft.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(row) + "\n")
    events: list[str] = []
    lease = RecordingLease(events)
    with Store(tmp_path / "feedback.db") as store:
        queue = JobQueue(store)
        jobs = [
            queue.submit(
                JobSpec(stage="sft", method="lora", data=str(data), name=f"j{i}", base=str(demo_model))
            )
            for i in range(2)
        ]
        # a worker that dies at once: the lease must be returned whatever way a job ends
        exits = "import sys, time; time.sleep(0.2); sys.exit(1)"
        runner = JobRunner(
            store, tmp_path, worker_command=[sys.executable, "-c", exits], engine_leases=[lease]
        )
        finish = runner._finish

        def finishing(running, returncode, job):  # where the adapter would be hot-loaded
            events.append("finish while asleep" if lease.asleep else "finish awake")
            finish(running, returncode, job)

        runner._finish = finishing
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(store.get_job(j.id).status != "failed" for j in jobs):
            runner.step()
            time.sleep(0.05)
        assert [store.get_job(j.id).status for j in jobs] == ["failed", "failed"]
    assert events == ["sleep", "wake", "finish awake", "sleep", "wake", "finish awake"]


def test_the_runner_leaves_an_engine_without_a_lease_alone(tmp_path):
    with Store(tmp_path / "feedback.db") as store:
        runner = JobRunner(store, tmp_path)
        runner.step()  # nothing queued, no lease: nothing to do, nothing raised
        assert runner.engine_leases == ()


def test_only_a_managed_vllm_with_sleep_mode_gets_a_lease(tmp_path, demo_model):
    """Asked of the engines as the hub builds them (none started): the local engine and a vLLM elsewhere
    keep serving; a vLLM tunehub starts gets a lease only with sleep mode; the hub's ModelSet says what its
    primary base says."""
    from serving.cpu_share import CpuShare
    from serving.loader import load_local_engine
    from serving.model_set import ModelSet
    from serving.vllm import VLLMEngine
    from serving.vllm_process import VLLMOptions
    from tests.support.no_engine import NoEngine

    def managed(sleep: bool) -> VLLMEngine:
        options = VLLMOptions(model="m", port=1, log_path=tmp_path / "vllm.log", enable_sleep_mode=sleep)
        return VLLMEngine.managed(options)

    loop = asyncio.new_event_loop()
    try:
        local = load_local_engine(demo_model, model_name="demo")  # its weights stay put
        remote = VLLMEngine("http://127.0.0.1:1")  # a vLLM elsewhere: its GPUs are not ours
        assert engine_lease(local, loop) is None
        assert engine_lease(remote, loop) is None
        assert engine_lease(managed(sleep=False), loop) is None
        assert isinstance(engine_lease(managed(sleep=True), loop), SleepingEngineLease)
        assert isinstance(
            engine_lease(ModelSet(managed(sleep=True), open_model=None), loop), SleepingEngineLease
        )
        assert engine_lease(ModelSet(NoEngine(), open_model=None), loop) is None
        # jobs always get this process's cores: its local engines leave them one while they train
        cores = CpuShare.of_process()
        assert job_leases(local, loop) == [cores]
        assert [type(lease) for lease in job_leases(managed(sleep=True), loop)] == [
            SleepingEngineLease,
            CpuShare,
        ]
    finally:
        loop.close()


@pytest.mark.slow
def test_the_lease_sleeps_and_wakes_a_real_engine_from_the_runner_thread(tmp_path, demo_model):
    """Through vLLM's protocol, against a real `tunehub engine`: the runner's thread hops onto the loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    with EngineProcess(model=demo_model, log_path=tmp_path / "engine.log") as server:
        engine = VLLMEngine(server.url, max_lora_rank=8)
        try:
            on_loop(engine.start())
            lease = SleepingEngineLease(engine, loop)
            lease.acquire()
            assert on_loop(engine.is_sleeping())
            lease.release()
            assert not on_loop(engine.is_sleeping())
        finally:
            on_loop(engine.close())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
    assert Path(server.log_path).exists()
