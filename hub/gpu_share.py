"""One GPU shared by serving and training: a managed vLLM started with sleep mode frees the GPU while jobs run
(and the cores of the hub's local engines are shared with them: `job_leases`).

The job runner (training/jobs/runner.py) calls `acquire` in its thread before the first job starts and
`release` once the last one has ended, before the new adapter is hot-loaded. Both hop onto the server's event
loop, where the engine lives, and wait there for vLLM's `/sleep` and `/wake_up` to answer.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class SleepingEngineLease:
    def __init__(self, engine, loop: asyncio.AbstractEventLoop, *, level: int = 1, timeout_s: float = 300.0):
        self.engine = engine
        self.loop = loop
        self.level = level  # 1: weights to CPU memory, KV cache dropped (a fast wake-up)
        self.timeout_s = timeout_s

    def acquire(self) -> None:
        log.info("training needs the GPU: putting vLLM to sleep")
        asyncio.run_coroutine_threadsafe(self.engine.sleep(self.level), self.loop).result(self.timeout_s)

    def release(self) -> None:
        log.info("training finished: waking vLLM up")
        asyncio.run_coroutine_threadsafe(self.engine.wake_up(), self.loop).result(self.timeout_s)


def engine_lease(engine, loop: asyncio.AbstractEventLoop) -> SleepingEngineLease | None:
    """A lease when the engine is a vLLM that tunehub started with sleep mode (it holds this machine's GPU);
    None otherwise: the local engine, or a remote vLLM on other GPUs, keeps serving while jobs train."""
    return SleepingEngineLease(engine, loop) if engine.can_sleep else None


def job_leases(engine, loop: asyncio.AbstractEventLoop) -> list:
    """What the job runner lends its jobs: this engine's GPU (`engine_lease`), and this process's cores, which
    its local engines then share with the job (serving.cpu_share)."""
    from serving.cpu_share import CpuShare

    gpu = engine_lease(engine, loop)
    return [*([gpu] if gpu is not None else []), CpuShare.of_process()]
