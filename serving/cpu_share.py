"""CpuShare: the CPU threads each local engine of a process decodes with, decided again before every step.

The cores are shared by the engines' decode steps, the hub's HTTP side and the training jobs the hub runs.
torch's OpenMP team waits at the end of every op for all of its threads, so a thread whose core another
process took stalls each op for a scheduler slice. Measured on the 2-core machine (SmolLM2-135M): with both
cores the engine served 16 clients at 149 tok/s in float32 (1 thread: 106) and 313 in bfloat16 (221), one
client at 33 tok/s in bfloat16; but while an SFT job trained beside it, one client got 6 tok/s with 2
threads and 25 with 1. So an engine that was given no thread count takes:

- all the cores (at most torch's own count, which follows OMP_NUM_THREADS) while nothing trains;
- all but one while a training job runs: the hub's job runner holds the share (`acquire` when its first job
  starts, `release` when the last one has ended);
- while several engines of the process decode at once (further base models, whole models), an even split.

A count given with `--threads` is fixed and this share is not asked. It knows only the jobs this hub runs:
on a machine busy with other work, give `--threads`.

    share = CpuShare.of_process()
    threads = share.threads_for(engine)   # the engine, before a step: it decodes now
    share.idle(engine)                    # the engine, when it has nothing to decode
    share.acquire(); share.release()      # the job runner, around its jobs
"""

from __future__ import annotations

import os
import threading

_process_share: CpuShare | None = None
_process_lock = threading.Lock()


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def usable_cores() -> int:
    """The most threads an engine takes: the cores this process may run on, at most torch's own count (which
    follows OMP_NUM_THREADS, so a user's limit there holds)."""
    import torch

    return max(1, min(torch.get_num_threads(), available_cores()))


class CpuShare:
    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores if cores is not None else usable_cores()
        if self.cores < 1:
            raise ValueError(f"cores={self.cores!r}: a CPU share needs at least 1 core")
        self._lock = threading.Lock()
        self._jobs = 0
        self._decoding: set[int] = set()  # id() of each engine that decodes now

    @classmethod
    def of_process(cls) -> CpuShare:
        """The one share of this process's cores, made on first use: every local engine opened without a
        thread count, and the hub's job runner, use it."""
        global _process_share
        with _process_lock:
            if _process_share is None:
                _process_share = cls()
            return _process_share

    @property
    def training(self) -> bool:
        return self._jobs > 0

    def acquire(self) -> None:
        """A training job starts beside the engines: they leave it a core from their next step."""
        with self._lock:
            self._jobs += 1

    def release(self) -> None:
        """The jobs have ended: the engines take every core again."""
        with self._lock:
            self._jobs = max(0, self._jobs - 1)

    def threads_for(self, engine: object) -> int:
        """The threads `engine` steps with now; it counts as decoding until `idle(engine)`."""
        with self._lock:
            self._decoding.add(id(engine))
            free = self.cores - 1 if self._jobs else self.cores
            return max(1, free // len(self._decoding))

    def idle(self, engine: object) -> None:
        """`engine` has nothing to decode: the others may take its threads."""
        with self._lock:
            self._decoding.discard(id(engine))
