"""OtherWork: how many of this process's cores other processes keep busy, read from /proc (Linux).

Over each window it takes the busy time of the CPUs this process may run on (/proc/stat's per-CPU lines:
user, nice, system, irq, softirq; not idle, iowait or a VM's steal) and subtracts this process's own CPU
time (`os.times`, every thread; a child process such as a training job counts as other work). The result is
in cores: 1.0 is one core kept busy by someone else. Where /proc/stat cannot be read it reports 0.

    other = OtherWork()
    other.cores()   # at most one new reading per window; the last value in between
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection

BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (guest time is inside user)
Reading = tuple[float, float]  # (busy seconds of the watched CPUs, this process's CPU seconds)


def affinity() -> set[int]:
    """The CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def read_proc(cpus: Collection[int], stat: str = "/proc/stat") -> Reading | None:
    """Busy seconds of `cpus` since boot and this process's CPU seconds; None where /proc/stat is missing."""
    try:
        with open(stat) as f:
            lines = f.readlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{n}" for n in cpus}
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name in wanted:
            values = rest.split()
            busy += sum(int(values[i]) for i in BUSY_FIELDS if i < len(values))
    own = os.times()
    return busy / tick, own.user + own.system


class OtherWork:
    def __init__(
        self,
        window_s: float = 0.5,
        read: Callable[[], Reading | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        cpus = affinity()
        self.window_s = window_s
        self._read = read or (lambda: read_proc(cpus))
        self._clock = clock
        self._last: tuple[float, Reading] | None = None
        self._cores = 0.0

    def cores(self) -> float:
        """Cores other processes kept busy over the last finished window (0 until one has finished)."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < self.window_s:
            return self._cores
        reading = self._read()
        if reading is None:
            return 0.0
        if self._last is not None:
            then, (busy, own) = self._last
            self._cores = max(0.0, ((reading[0] - busy) - (reading[1] - own)) / (now - then))
        self._last = (now, reading)
        return self._cores
