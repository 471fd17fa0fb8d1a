"""Keeping torch's OpenMP thread teams to the one the engine decodes on.

libgomp (torch's OpenMP on Linux) keeps a team of threads for every thread that has run a parallel op, for
as long as that thread lives. Once it manages more threads than there are cores it stops spinning between
ops, so every op of every team waits for its threads to be woken. A model loaded in the hub's main thread
left such a team behind, and the engine's own thread then ran with 2 threads on the 2-core machine at
55.6 ms a SmolLM2 decode step instead of 31.8 (bfloat16, in process; 60 linear layers alone 10-13 ms
instead of 7.7). Work that runs torch ops before the engine starts (loading, checks, GGUF conversion) runs
in a thread that ends with it, and its team ends too.

    base = in_passing_thread(lambda: AutoModelForCausalLM.from_pretrained(path))
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def in_passing_thread(work: Callable[[], T]) -> T:
    """Run `work` in a new thread that ends when it returns; return its result or raise its exception."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunehub-load") as pool:
        return pool.submit(work).result()
