"""Tests of the feedback store: migrations, concurrency, votes and revotes, errors, accounts and lineage."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from feedback.errors import Conflict, Invalid, NotFound, StoreError
from feedback.store import Store, generation_id

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def answers(store: Store):
    """Three answers to PROMPT from three models, in one conversation."""
    return [
        store.add_generation(prompt=PROMPT, model=model, text=text, conversation_id="conv-1", source="ui")
        for model, text in [("base", "Paris."), ("lora-a", "It is Paris."), ("lora-b", "Lyon.")]
    ]


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


MIGRATIONS = [
    "0001_initial",
    "0002_pairwise_models",
    "0003_job_adapter",
    "0004_promotions",
    "0005_vote_withdrawn_at",
    "0006_vote_triage",
]


def test_migrations_are_idempotent_on_an_existing_file(tmp_path: Path):
    path = tmp_path / "feedback.db"
    with Store(path) as first:
        assert first.migrations_applied == MIGRATIONS
        generation = first.add_generation(prompt=PROMPT, model="base", text="Paris.")
        first.add_thumbs(generation.id, "up", rater="alice")
    schema = _schema(path)
    with Store(path) as second:
        assert second.migrations_applied == []  # nothing new to apply
        assert second.migrations == MIGRATIONS
        assert second.get_generation(generation.id).text == "Paris."
        assert second.counts().votes == 1
    assert _schema(path) == schema
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM _migrations").fetchall() == [(m,) for m in MIGRATIONS]


def test_pairwise_models_are_backfilled_for_votes_cast_before_0002(tmp_path: Path):
    # a file whose votes predate 0002_pairwise_models: the migration copies each vote's models onto it
    path = tmp_path / "feedback.db"
    with Store(path) as store:
        a = store.add_generation(prompt=PROMPT, model="base", text="Paris.")
        b = store.add_generation(prompt=PROMPT, model="tuned", text="Lyon.")
        store.add_pairwise(a.id, b.id, "a", rater="alice")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX idx_votes_pairwise")
        conn.execute("DROP INDEX idx_votes_pairwise_cells")  # 0006 (issue 16) indexes the columns too
        conn.execute("ALTER TABLE votes DROP COLUMN model_a")
        conn.execute("ALTER TABLE votes DROP COLUMN model_b")
        conn.execute("DELETE FROM _migrations WHERE name = '0002_pairwise_models'")
    with Store(path) as store:
        assert store.migrations_applied == ["0002_pairwise_models"]
        assert store.pairwise_comparisons() == [("base", "tuned", "a")]


def test_store_uses_wal(store: Store):
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_eight_threads_of_a_thousand_votes_lose_nothing(store: Store):
    generations = [
        store.add_generation(
            prompt=PROMPT, model=f"m{i % 4}", text=f"answer {i}", conversation_id=f"c{i % 7}"
        )
        for i in range(50)
    ]
    errors: list[BaseException] = []

    def rate(thread: int) -> None:
        try:
            for i in range(1000):
                a, b = generations[(thread + i) % 50], generations[(thread + i + 1) % 50]
                rater = f"rater-{thread}-{i}"  # a distinct rater per vote, so no vote replaces another
                if i % 2:
                    store.add_pairwise(a.id, b.id, "ab"[i % 4 // 2], rater=rater)
                else:
                    store.add_thumbs(a.id, "up", rater=rater, tags=["helpful"])
                if i % 50 == 0:  # reads interleaved with the writes, on this thread's own connection
                    assert store.list_votes(rater)[0].rater == rater
        except BaseException as e:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=rate, args=(t,)) for t in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    print(f"\n8 threads x 1,000 votes: {elapsed:.2f} s, {8000 / elapsed:,.0f} votes/s")
    assert errors == []
    counts = store.counts()
    assert counts.votes == 8000
    assert counts.by_kind == {"pairwise": 4000, "thumbs": 4000}
    assert len(counts.by_rater) == 8000
    assert len({v.id for v in store.list_votes()}) == 8000


def test_revote_replaces_the_first_and_keeps_it_for_lineage(store: Store, answers):
    first = store.add_thumbs(answers[0].id, "up", rater="alice", tags=["correct"])
    second = store.add_thumbs(answers[0].id, "down", rater="alice", comment="changed my mind")
    assert second.replaces == first.id
    assert store.list_votes("alice") == [second]
    assert store.get_vote(first.id).active is False
    assert store.get_vote(first.id).value == "up"  # the old vote itself is never rewritten
    assert [v.id for v in store.list_votes("alice", include_replaced=True)] == [second.id, first.id]

    # Pairwise: the same two answers in the other order are the same item.
    p1 = store.add_pairwise(answers[0].id, answers[1].id, "a", rater="alice")
    p2 = store.add_pairwise(answers[1].id, answers[0].id, "tie", rater="alice")
    assert p2.replaces == p1.id
    # Another rater, or another kind of vote on the same answer, replaces nothing.
    assert store.add_thumbs(answers[0].id, "up", rater="bob").replaces is None
    assert store.add_edit(answers[0].id, "Paris, France.", rater="alice").replaces is None
    counts = store.counts()
    assert counts.votes == 4 and counts.replaced == 2
    assert counts.by_rater == {"alice": {"edit": 1, "pairwise": 1, "thumbs": 1}, "bob": {"thumbs": 1}}


def test_ranking_with_ties_and_its_revote(store: Store, answers):
    a, b, c = (g.id for g in answers)
    vote = store.add_ranking([a, [b, c]], rater="alice")
    assert vote.ranking == ((a,), (b, c))
    assert vote.generation_ids == (a, b, c)
    again = store.add_ranking([c, b, a], rater="alice")
    assert again.replaces == vote.id
    assert store.list_votes("alice", kind="ranking") == [again]


def test_unknown_ids_raise_not_found_and_write_nothing(store: Store, answers):
    with pytest.raises(NotFound) as e:
        store.add_thumbs("chatcmpl-missing", "up", rater="alice")
    assert e.value.status == 404 and "chatcmpl-missing" in e.value.message
    with pytest.raises(NotFound, match="nope"):
        store.add_pairwise(answers[0].id, "nope", "a", rater="alice")
    with pytest.raises(NotFound, match="gone"):
        store.add_ranking([answers[0].id, "gone"], rater="alice")
    with pytest.raises(NotFound, match="nope"):
        store.get_generation("nope")
    for missing in (
        lambda: store.get_vote(999),
        lambda: store.get_job("job-x"),
        lambda: store.get_adapter("x"),
    ):
        with pytest.raises(NotFound):
            missing()
    assert store.counts().votes == 0


@pytest.mark.parametrize(
    ("vote", "bad_value"),
    [
        (lambda s, g: s.add_thumbs(g[0].id, "sideways", rater="r"), "sideways"),
        (lambda s, g: s.add_pairwise(g[0].id, g[1].id, "maybe", rater="r"), "maybe"),
        (lambda s, g: s.add_pairwise(g[0].id, g[0].id, "a", rater="r"), "both"),
        (lambda s, g: s.add_ranking([g[0].id], rater="r"), "1 answers"),
        (lambda s, g: s.add_ranking([f"g{i}" for i in range(7)], rater="r"), "7 answers"),
        (lambda s, g: s.add_ranking([g[0].id, g[0].id], rater="r"), "twice"),
        (lambda s, g: s.add_ranking("abc", rater="r"), "abc"),
        (lambda s, g: s.add_edit(g[0].id, "Paris.", rater="r"), "equals the original"),
        (lambda s, g: s.add_thumbs(g[0].id, "up", rater="r", tags="helpful"), "helpful"),
        (lambda s, g: s.add_thumbs(g[0].id, "up", rater="r", source="email"), "email"),
    ],
)
def test_invalid_shapes_raise_invalid_naming_the_value(store: Store, answers, vote, bad_value):
    with pytest.raises(Invalid) as e:
        vote(store, answers)
    assert e.value.status == 422
    assert bad_value in e.value.message
    assert store.counts().votes == 0


def test_pairwise_and_ranking_need_the_same_context(store: Store, answers):
    other = store.add_generation(
        prompt=[{"role": "user", "content": "Capital of Spain?"}], model="base", text="Madrid"
    )
    with pytest.raises(Invalid, match="different prompts"):
        store.add_pairwise(answers[0].id, other.id, "a", rater="alice")
    with pytest.raises(Invalid, match="different prompts"):
        store.add_ranking([answers[0].id, answers[1].id, other.id], rater="alice")


def test_generation_ids_follow_the_response_id(store: Store):
    assert generation_id("chatcmpl-abc") == "chatcmpl-abc"
    assert generation_id("chatcmpl-abc", 2) == "chatcmpl-abc:2"
    g = store.add_generation(
        prompt=PROMPT,
        model="base",
        text="Paris.",
        response_id="chatcmpl-abc",
        choice_index=2,
        params={"temperature": 0.7},
        prompt_tokens=9,
        completion_tokens=2,
        latency_ms=31.5,
        ttft_ms=12,
        finish_reason="stop",
        rater="key-1",
    )
    stored = store.get_generation("chatcmpl-abc:2")
    assert stored == g
    assert stored.params == {"temperature": 0.7} and stored.ttft_ms == 12.0 and stored.source == "api"
    assert store.get_conversation(g.conversation_id).id == g.conversation_id  # created with it
    with pytest.raises(Conflict) as e:
        store.add_generation(prompt=PROMPT, model="base", text="again", id="chatcmpl-abc:2")
    assert e.value.status == 409
    with pytest.raises(Invalid, match="prompt"):
        store.add_generation(prompt=[], model="base", text="x")
    with pytest.raises(Invalid, match="-5"):
        store.add_generation(prompt=PROMPT, model="base", text="x", completion_tokens=-5)


def test_conversations_and_their_generations(store: Store, answers):
    conversation = store.get_conversation("conv-1")
    assert conversation.source == "ui"
    assert [g.id for g in store.list_generations(conversation_id="conv-1")] == [g.id for g in answers]
    assert [g.model for g in store.list_generations(model="lora-b")] == ["lora-b"]
    fresh = store.add_conversation(title="About France", rater="alice")
    assert store.list_conversations(rater="alice") == [fresh]
    with pytest.raises(Conflict):
        store.add_conversation(id="conv-1")


def test_raters_passwords_and_api_keys_are_stored_hashed(store: Store):
    admin = store.add_rater("admin", role="admin", password="correct horse")
    assert admin.role == "admin" and admin.has_password
    with pytest.raises(Conflict) as e:
        store.add_rater("admin")
    assert e.value.status == 409
    with pytest.raises(Invalid, match="boss"):
        store.add_rater("someone", role="boss")
    with pytest.raises(Invalid, match="bad name!"):
        store.add_rater("bad name!")
    assert store.check_password("admin", "correct horse") == admin
    assert store.check_password("admin", "wrong") is None
    assert store.check_password("nobody", "correct horse") is None

    record, key = store.create_api_key("admin", label="ci")
    assert store.check_api_key(key) == record
    assert store.check_api_key(key + "x") is None
    with sqlite3.connect(store.path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "correct horse" not in dump and key not in dump
    revoked = store.revoke_api_key(record.id)
    assert revoked.revoked_at is not None
    assert store.check_api_key(key) is None
    with pytest.raises(NotFound):
        store.create_api_key("nobody")


def test_counts_for_the_data_tab(store: Store, answers):
    store.add_thumbs(answers[0].id, "up", rater="alice")
    store.add_thumbs(answers[2].id, "down", rater="alice", tags=["wrong"])
    store.add_pairwise(answers[0].id, answers[2].id, "a", rater="bob")
    store.add_ranking([answers[1].id, answers[0].id, answers[2].id], rater="bob")
    counts = store.counts()
    assert (counts.generations, counts.conversations, counts.votes) == (3, 1, 4)
    assert counts.by_kind == {"thumbs": 2, "pairwise": 1, "ranking": 1}
    assert counts.by_rater == {"alice": {"thumbs": 2}, "bob": {"pairwise": 1, "ranking": 1}}


def test_jobs_adapters_and_the_votes_that_trained_them(store: Store, answers):
    vote = store.add_thumbs(answers[0].id, "up", rater="alice")
    dataset = store.add_dataset(kind="sft", format="trl", content_hash="abc", n_rows=1, vote_ids=[vote.id])
    job = store.create_job("sft", "lora", params={"lr": 1e-4}, dataset_id=dataset.id)
    assert (job.status, job.progress, job.params) == ("queued", 0.0, {"lr": 1e-4})
    running = store.update_job(job.id, status="running", progress=0.5, metrics={"loss": [2.0, 1.5]})
    assert running.started_at is not None and running.metrics == {"loss": [2.0, 1.5]}
    done = store.update_job(job.id, status="succeeded", progress=1.0)
    assert done.finished_at is not None
    with pytest.raises(Conflict):
        store.update_job(job.id, progress=0.2)
    with pytest.raises(Invalid, match="1.5"):
        store.update_job(job.id, status="queued", progress=1.5)
    assert [j.id for j in store.list_jobs(status="succeeded")] == [job.id]

    v1 = store.add_adapter("helpful", base="demo", method="lora", path="/a/1", job_id=job.id)
    v2 = store.add_adapter(
        "helpful", base="demo", method="lora", path="/a/2", parent=v1.ref, dataset_id=dataset.id
    )
    assert (v1.version, v2.version, v2.parent) == (1, 2, "helpful@1")
    assert store.get_adapter("helpful") == v2
    assert store.adapter_vote_ids("helpful", 1) == (vote.id,)  # through its job's dataset
    assert store.adapter_vote_ids("helpful") == (vote.id,)
    promoted = store.set_adapter_status("helpful", 2, "promoted")
    assert promoted.status == "promoted"
    assert store.list_adapters(status="promoted") == [promoted]
    with pytest.raises(NotFound, match="helpful@7"):
        store.add_adapter("x", base="demo", method="lora", path="/x", parent="helpful@7")
    with pytest.raises(NotFound, match="job-nope"):
        store.add_adapter("x", base="demo", method="lora", path="/x", job_id="job-nope")


def test_errors_share_a_base_with_an_http_status():
    for error, status in ((NotFound, 404), (Invalid, 422), (Conflict, 409)):
        assert issubclass(error, StoreError) and error.status == status
