"""CpuShare: the threads each local engine decodes with, as training jobs and other engines come and go."""

from __future__ import annotations

import threading

import pytest
import torch

from serving.cpu_share import CpuShare, available_cores, usable_cores


class Engine:
    """Anything an engine is: the share tells engines apart by identity."""


def test_an_engine_alone_takes_every_core_and_leaves_one_to_a_training_job():
    share, engine = CpuShare(cores=4), Engine()
    assert share.threads_for(engine) == 4
    share.acquire()
    assert share.training
    assert share.threads_for(engine) == 3
    share.release()
    assert not share.training
    assert share.threads_for(engine) == 4


def test_engines_decoding_at_once_split_the_cores_and_an_idle_one_gives_its_threads_back():
    share, first, second = CpuShare(cores=4), Engine(), Engine()
    assert share.threads_for(first) == 4
    assert share.threads_for(second) == 2
    assert share.threads_for(first) == 2
    share.acquire()
    assert share.threads_for(first) == 1  # 3 free cores between two engines
    share.idle(second)
    assert share.threads_for(first) == 3
    share.idle(second)  # idle twice: nothing changes
    assert share.threads_for(first) == 3


def test_one_core_is_never_shared_down_to_none():
    share = CpuShare(cores=1)
    share.acquire()
    assert [share.threads_for(Engine()) for _ in range(3)] == [1, 1, 1]


def test_jobs_are_counted_and_a_release_too_many_does_not_go_below_none():
    share, engine = CpuShare(cores=2), Engine()
    share.acquire()
    share.acquire()
    share.release()
    assert share.threads_for(engine) == 1  # one job still runs
    share.release()
    share.release()
    assert share.threads_for(engine) == 2
    share.acquire()
    assert share.threads_for(engine) == 1


def test_cores_other_processes_keep_busy_are_left_to_them_with_a_margin_against_flipping():
    others = [0.0]
    share, engine = CpuShare(cores=4, other_work=lambda: others[0]), Engine()
    seen = []
    for busy in (0.0, 0.5, 0.7, 0.9, 1.3, 0.5, 0.3, 2.6, 9.0, 0.0):
        others[0] = busy
        seen.append(share.threads_for(engine))
    # 0.5 is within the margin of 0; 0.7 takes a core; 1.3 and 0.5 stay within it of 1; 0.3 gives it back;
    # never below one thread
    assert seen == [4, 4, 3, 3, 3, 3, 4, 1, 1, 4]
    others[0] = 1.0
    share.acquire()  # a job and other work: the larger reserve counts, not both
    assert share.threads_for(engine) == 3


def test_an_engine_takes_at_most_its_own_count_however_many_cores_are_free():
    share = CpuShare(cores=16, most=4, other_work=lambda: 8.0)
    assert share.threads_for(Engine()) == 4
    assert CpuShare(cores=16, most=4, other_work=lambda: 13.0).threads_for(Engine()) == 3


def test_a_share_without_cores_is_refused_naming_the_count():
    with pytest.raises(ValueError, match="cores=0"):
        CpuShare(cores=0)


def test_the_process_share_is_one_object_and_takes_at_most_the_cores_it_may_run_on():
    shares: list[CpuShare] = []
    threads = [threading.Thread(target=lambda: shares.append(CpuShare.of_process())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(share is shares[0] for share in shares)
    assert shares[0].cores == available_cores() and shares[0].other_work is not None
    # its most is made on first use from that thread's torch count (a test before this one may lower it)
    assert 1 <= shares[0].most <= available_cores()
    assert usable_cores() <= min(torch.get_num_threads(), available_cores())


def test_the_job_runner_holds_the_share_while_its_job_runs_and_the_engine_follows(tmp_path, demo_model):
    """A real runner, a real worker process and a real engine: while the job runs the engine decodes on all
    cores but one, and on all of them again once the job has ended."""
    import asyncio
    import json
    import sys
    import time

    from feedback.store import Store
    from serving.engine import GenerationRequest, SamplingParams
    from serving.loader import load_local_engine
    from training.jobs.queue import JobQueue
    from training.jobs.runner import JobRunner
    from training.jobs.spec import JobSpec

    share = CpuShare(cores=2)
    data = tmp_path / "sft.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(row) + "\n")
    request = GenerationRequest(
        messages=[{"role": "user", "content": "Hi"}], sampling=SamplingParams(max_tokens=2, temperature=0)
    )

    async def decoding_threads(engine) -> int:
        async for _ in engine.generate(request):
            pass
        return await engine._call_in_worker(torch.get_num_threads)

    async def run() -> list[int]:
        engine = load_local_engine(demo_model, dtype="float32", cpu_share=share)
        await engine.start()
        seen = [await decoding_threads(engine)]
        with Store(tmp_path / "feedback.db") as store:
            job = JobQueue(store).submit(
                JobSpec(stage="sft", method="lora", data=str(data), name="j", base=str(demo_model))
            )
            trains = "import time; time.sleep(3)"  # the worker: a job that takes its time, then fails
            runner = JobRunner(
                store, tmp_path, worker_command=[sys.executable, "-c", trains], engine_leases=[share]
            )
            await asyncio.to_thread(runner.step)
            assert store.get_job(job.id).status == "running" and share.training
            seen.append(await decoding_threads(engine))
            deadline = time.monotonic() + 60
            while store.get_job(job.id).status == "running" and time.monotonic() < deadline:
                await asyncio.to_thread(runner.step)
                await asyncio.sleep(0.1)
            assert store.get_job(job.id).status == "failed" and not share.training
        seen.append(await decoding_threads(engine))
        await engine.close()
        return seen

    assert asyncio.run(run()) == [2, 1, 2]
