"""Group commit: votes that arrive together share one transaction, yet each succeeds or fails on its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feedback.errors import NotFound
from feedback.store import Store
from hub.write_batcher import WriteBatcher

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "feedback.db") as store:
        yield store


def _answers(store: Store, n: int) -> list[str]:
    return [
        store.add_generation(prompt=PROMPT, model=f"m{i}", text=f"{i}", source="api").id for i in range(n)
    ]


def test_concurrent_votes_share_commits_and_fail_alone(store: Store, monkeypatch):
    ids = _answers(store, 40)
    batches = []
    real_batch = store.batch

    def counting_batch():
        batches.append(1)
        return real_batch()

    monkeypatch.setattr(store, "batch", counting_batch)
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
    assert 1 <= len(batches) < 40  # grouped: fewer commits than votes
    stored = {v.rater: v for r in range(40) for v in store.list_votes(f"r{r}")}
    assert sorted(stored) == sorted(f"r{i}" for i in range(40) if i not in failed)
    assert all(stored[f"r{i}"].id == outcomes[i].id for i in range(40) if i not in failed)


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
