"""Group commit: votes that arrive together share one transaction, yet each succeeds or fails on its own; the
batch is written in place on the event loop when the writer is free, and in a thread when it is not."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from feedback.errors import NotFound, WriterBusy
from feedback.store import Store
from hub.write_batcher import WriteBatcher

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def commits(store: Store, monkeypatch) -> list[int]:
    """One entry per transaction the store opens through `Store.batch()`."""
    opened: list[int] = []
    real_batch = store.batch

    def counting_batch(**kwargs):
        opened.append(1)
        return real_batch(**kwargs)

    monkeypatch.setattr(store, "batch", counting_batch)
    return opened


def _answers(store: Store, n: int) -> list[str]:
    return [
        store.add_generation(prompt=PROMPT, model=f"m{i}", text=f"{i}", source="api").id for i in range(n)
    ]


def test_concurrent_votes_share_commits_and_fail_alone(store: Store, commits: list[int]):
    ids = _answers(store, 40)
    batcher = WriteBatcher(store)

    async def vote(i: int):
        target = "gen-unknown" if i % 10 == 3 else ids[i]
        return await batcher.run(lambda: store.add_thumbs(target, "up", rater=f"r{i}", source="api"))

    async def storm():
        return await asyncio.gather(*(vote(i) for i in range(40)), return_exceptions=True)

    outcomes = asyncio.run(storm())
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
    assert failed == [3, 13, 23, 33]
    assert all(isinstance(outcomes[i], NotFound) for i in failed)
    assert 1 <= len(commits) < 40  # grouped: fewer commits than votes
    stored = {v.rater: v for r in range(40) for v in store.list_votes(f"r{r}")}
    assert sorted(stored) == sorted(f"r{i}" for i in range(40) if i not in failed)
    assert all(stored[f"r{i}"].id == outcomes[i].id for i in range(40) if i not in failed)


def test_votes_that_reach_the_batcher_a_few_loop_turns_apart_share_one_commit(
    store: Store, commits: list[int]
):
    """Requests read together reach `run` a turn or two apart (body, auth and validation each await): the
    flush waits those turns out, so they share the commit (bench/store.py: ~600 -> ~1,600 votes/s)."""
    ids = _answers(store, 8)
    batcher = WriteBatcher(store)

    async def vote(i: int):
        for _ in range(i % 3):  # the handler's own awaits before it votes
            await asyncio.sleep(0)
        return await batcher.run(lambda: store.add_thumbs(ids[i], "up", rater=f"r{i}", source="api"))

    async def storm():
        return await asyncio.gather(*(vote(i) for i in range(8)))

    assert len(asyncio.run(storm())) == 8
    assert len(commits) == 1


def test_a_failed_commit_fails_every_vote_of_its_batch_and_stores_none(store: Store):
    ids = _answers(store, 3)
    store.add_thumbs(ids[0], "down", rater="earlier", source="api")

    class DiskFull(BaseException):
        """Stands in for an error that aborts the whole transaction (it is not an `Exception`)."""

    def broken():
        raise DiskFull("disk full")

    batcher = WriteBatcher(store)

    async def storm():
        calls = [lambda: store.add_thumbs(ids[1], "up", rater="a", source="api"), broken]
        calls.append(lambda: store.add_thumbs(ids[2], "up", rater="b", source="api"))
        return await asyncio.gather(*(batcher.run(c) for c in calls), return_exceptions=True)

    outcomes = asyncio.run(storm())
    # the three arrive together, so they share one transaction, and it is rolled back
    assert all(isinstance(o, DiskFull) for o in outcomes)
    assert store.list_votes("a") == [] and store.list_votes("b") == []
    assert [v.rater for v in store.list_votes("earlier")] == ["earlier"]
    # and the store still writes afterwards
    assert store.add_thumbs(ids[2], "up", rater="b", source="api").value == "up"


def test_a_free_writer_is_used_in_place_without_a_thread_hop(store: Store):
    ids = _answers(store, 2)
    batcher = WriteBatcher(store)

    async def vote():
        loop_thread = threading.get_ident()
        writers = []

        def write():
            writers.append(threading.get_ident())
            return store.add_thumbs(ids[0], "up", rater="a", source="api")

        vote = await batcher.run(write)
        return vote, writers == [loop_thread]

    vote, in_place = asyncio.run(vote())
    assert in_place and store.list_votes("a")[0].id == vote.id


def test_a_busy_database_is_waited_for_in_a_thread_while_the_loop_runs_on(store: Store):
    """Another process's transaction (here a second connection) holds the write lock: the vote waits for it
    in a worker thread, the event loop keeps serving, and the vote is stored once the lock is released."""
    ids = _answers(store, 1)
    other = sqlite3.connect(store.path, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(WriterBusy), store.batch(wait=False):
        pytest.fail("the block must not run while another connection writes")
    batcher = WriteBatcher(store)

    async def scenario():
        ticks = 0
        writers = []

        def write():
            writers.append(threading.get_ident())
            return store.add_thumbs(ids[0], "up", rater="a", source="api")

        pending = asyncio.create_task(batcher.run(write))
        for _ in range(20):  # the loop is free while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not pending.done() and store.list_votes("a") == []
        other.rollback()
        vote = await asyncio.wait_for(pending, 10)
        return vote, ticks, writers[0] != threading.get_ident()

    vote, ticks, in_a_thread = asyncio.run(scenario())
    other.close()
    assert ticks == 20 and in_a_thread and store.list_votes("a")[0].id == vote.id


def test_a_writer_held_by_another_thread_is_not_waited_for_in_place(store: Store):
    ids = _answers(store, 1)
    held, release = threading.Event(), threading.Event()

    def hold_the_writer():
        with store.batch():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_writer)
    holder.start()
    held.wait(10)
    try:
        with pytest.raises(WriterBusy), store.batch(wait=False):
            pytest.fail("the block must not run while another thread writes")
    finally:
        release.set()
        holder.join()
    assert store.add_thumbs(ids[0], "up", rater="a", source="api").value == "up"
