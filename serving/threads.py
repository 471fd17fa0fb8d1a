"""How many CPU threads the engine's matmuls use: all cores but one, which the HTTP side keeps.

The worker thread shares the machine with the event loop that streams its tokens, the Gradio UI and, on a
small box, the clients. torch's OpenMP team waits at the end of every parallel op for all of its threads, so
when one of them is descheduled (the event loop took its core) the whole op stalls for a scheduler slice.
Measured on the 2-core machine (demo model, 16 streaming clients): with torch's default of 2 threads the
second thread spent 73-156 us of CPU per token spinning and the server 405-610 us per token in all; with 1,
332-366 us. SmolLM2-135M one decode step under other load: 0.8-2.6 s with 2 threads, 0.11-0.22 s with 1.
vLLM's CPU backend gives the same advice (keep a core for the API server).
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def engine_threads(requested: int | None = None) -> int:
    """`requested`, or auto: torch's own default (which follows OMP_NUM_THREADS) less the core the HTTP side
    keeps, at least 1."""
    import torch

    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads={requested!r}: the engine needs at least 1 thread")
        return requested
    return max(1, min(torch.get_num_threads(), available_cores() - 1))
