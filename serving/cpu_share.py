"""CpuShare: the CPU threads each local engine of a process decodes with, decided again before every step.

The cores are shared by the engines' decode steps, the hub's HTTP side, the training jobs the hub runs and
whatever else runs on the machine. torch's OpenMP team waits at the end of every op for all of its threads,
so a thread whose core another process took stalls each op for a scheduler slice. Measured on the 2-core
machine (SmolLM2-135M): with both cores the engine served 16 clients at 149 tok/s in float32 (1 thread: 106)
and 313 in bfloat16 (221), one client at 33 tok/s in bfloat16; but while an SFT job trained beside it, one
client got 6 tok/s with 2 threads and 25 with 1, and beside a process spinning on one core 6.9 tok/s with 2
threads and 25 with this share. So an engine that was given no thread count takes all the cores (at most
torch's own count, which follows OMP_NUM_THREADS), less:

- one while a training job of the hub runs: the job runner holds the share (`acquire` when its first job
  starts, `release` when the last one has ended);
- as many as other processes keep busy (serving.other_work, read at most every half second, rounded, with a
  margin so that it does not flip back and forth around a half core): the other test workers of a test run,
  a browser, someone's build;

and while several engines of the process decode at once (further base models, whole models), they split
what is left evenly. A count given with `--threads` is fixed and this share is not asked.

    share = CpuShare.of_process()
    threads = share.threads_for(engine)   # the engine, before a step: it decodes now
    share.idle(engine)                    # the engine, when it has nothing to decode
    share.acquire(); share.release()      # the job runner, around its jobs
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .other_work import OtherWork, affinity

HYSTERESIS = 0.6  # cores: the reserve for other work changes once it is this far from what they use
_process_share: CpuShare | None = None
_process_lock = threading.Lock()


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(affinity())


def usable_cores() -> int:
    """The most threads an engine takes: the cores this process may run on, at most torch's own count (which
    follows OMP_NUM_THREADS, so a user's limit there holds)."""
    import torch

    return max(1, min(torch.get_num_threads(), available_cores()))


class CpuShare:
    def __init__(
        self, cores: int, *, most: int | None = None, other_work: Callable[[], float] | None = None
    ) -> None:
        """`cores`: the CPUs this process may run on; `most`: the most threads an engine takes (default:
        `cores`); `other_work()`: the cores other processes keep busy now (None: not watched)."""
        if cores < 1:
            raise ValueError(f"cores={cores!r}: a CPU share needs at least 1 core")
        self.cores = cores
        self.most = max(1, min(most or cores, cores))
        self.other_work = other_work
        self._lock = threading.Lock()
        self._jobs = 0
        self._reserve = 0  # cores left to other processes
        self._decoding: set[int] = set()  # id() of each engine that decodes now

    @classmethod
    def of_process(cls) -> CpuShare:
        """The one share of this process's cores, made on first use and watching the other processes: every
        local engine opened without a thread count, and the hub's job runner, use it."""
        global _process_share
        with _process_lock:
            if _process_share is None:
                _process_share = cls(available_cores(), most=usable_cores(), other_work=OtherWork().cores)
            return _process_share

    @property
    def training(self) -> bool:
        return self._jobs > 0

    def acquire(self) -> None:
        """A training job starts beside the engines: they leave it a core from their next step."""
        with self._lock:
            self._jobs += 1

    def release(self) -> None:
        """A job has ended: once none runs, the engines take back the core they left it."""
        with self._lock:
            self._jobs = max(0, self._jobs - 1)

    def threads_for(self, engine: object) -> int:
        """The threads `engine` steps with now; it counts as decoding until `idle(engine)`."""
        with self._lock:
            self._decoding.add(id(engine))
            if self.other_work is not None:
                others = self.other_work()
                if abs(others - self._reserve) > HYSTERESIS:
                    self._reserve = min(self.cores - 1, round(others))
            free = min(self.most, self.cores - max(self._reserve, 1 if self._jobs else 0))
            return max(1, free // len(self._decoding))

    def idle(self, engine: object) -> None:
        """`engine` has nothing to decode: the others may take its threads."""
        with self._lock:
            self._decoding.discard(id(engine))
