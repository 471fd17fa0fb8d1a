"""The services behind the feedback UI, without a browser: arena pairs (candidates drawn `boost` times as
often), rank places turned into tiers, and a conversation rebuilt from the store for its owner only.

Run: .venv/bin/python -m pytest tests/test_feedback_services.py -q
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from feedback.store import Store
from hub.arena_service import NoPair, pick_pair
from hub.auth import Principal
from hub.conversations import Conversations


def test_pick_pair_draws_two_different_models_in_random_sides():
    rng = random.Random(0)
    pairs = [pick_pair(["base", "a", "b"], set(), 3.0, rng) for _ in range(3000)]
    assert all(x != y for x, y in pairs)
    sides = Counter(x for x, _ in pairs)
    assert all(900 < n < 1100 for n in sides.values()), sides  # no model is stuck on one side


def test_candidates_are_drawn_boost_times_as_often():
    rng = random.Random(1)
    models = ["base", "old-1", "old-2", "old-3", "new"]
    seen = Counter(m for _ in range(20_000) for m in pick_pair(models, {"new"}, 3.0, rng))
    others = sum(seen[m] for m in models[:-1]) / 4
    # drawn first 3/7 of the time (weights 3 vs 1+1+1+1), second in most of the rest: about 2.1x in all
    assert 1.9 < seen["new"] / others < 2.4, seen
    plain = Counter(m for _ in range(20_000) for m in pick_pair(models, set(), 3.0, rng))
    assert 0.9 < plain["new"] / (sum(plain[m] for m in models[:-1]) / 4) < 1.1


def test_the_arena_never_pits_tunehub_default_against_what_it_stands_for(demo_model, tmp_path):
    """`tunehub-default` is an alias of the promoted adapter (or the base): it is listed on the API, but an
    arena battle between it and the model it names would be a model against itself."""
    from hub.arena_service import ArenaService
    from hub.chat_service import DEFAULT_MODEL, ChatService
    from hub.metrics import Metrics
    from serving.loader import load_local_engine

    # as the hub builds it: tunehub-default routes to nothing promoted, so to the base
    chat = ChatService(
        load_local_engine(demo_model, model_name="base"), Metrics(), default_adapter=lambda: None
    )
    assert DEFAULT_MODEL in [m.id for m in chat.models()]
    with Store(tmp_path / "feedback.db") as store:
        arena = ArenaService(chat, store, rng=random.Random(0))
        assert arena.models() == ["base"]
        with pytest.raises(NoPair, match="only 'base' is served"):
            arena.new_battle()


def test_one_model_never_faces_itself():
    """Issue 14, finding 6: every battle was the model against itself, said only after the vote."""
    with pytest.raises(NoPair, match=r"compares two different models, and only 'base' is served. Load an"):
        pick_pair(["base"], set(), 3.0, random.Random())
    with pytest.raises(NoPair, match="no model is served"):
        pick_pair([], set(), 3.0, random.Random())


def test_rank_places_become_tiers():
    gr = pytest.importorskip("gradio")
    from hub.ui.rank import tiers_from_places

    assert tiers_from_places(["g1", "g2", "g3"], ["2", "1", "2"]) == [["g2"], ["g1", "g3"]]
    with pytest.raises(gr.Error, match="answer 3"):
        tiers_from_places(["g1", "g2", "g3"], ["1", "2", None])
    with pytest.raises(gr.Error, match="same place"):
        tiers_from_places(["g1", "g2"], ["1", "1"])


def test_a_conversation_is_rebuilt_for_its_owner(tmp_path):
    with Store(tmp_path / "feedback.db") as store:
        conversations = Conversations(store)
        cid = conversations.start("alice", "What is the capital of France?  It is   a question.")
        system = {"role": "system", "content": "Be brief."}
        first = [system, {"role": "user", "content": "What is the capital of France?"}]
        store.add_generation(prompt=first, model="base", text="Lyon.", conversation_id=cid, rater="alice")
        regenerated = store.add_generation(
            prompt=first, model="base", text="Paris.", conversation_id=cid, rater="alice"
        )
        second = [
            *first,
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And Spain?"},
        ]
        last = store.add_generation(
            prompt=second, model="base", text="Madird.", conversation_id=cid, rater="alice"
        )
        store.add_edit(last.id, "Madrid.", rater="alice")

        assert [c.title for c in conversations.owned("alice")] == [
            "What is the capital of France? It is a question."
        ]
        history = conversations.open(cid, Principal("rater", "alice"))
        assert history.system == "Be brief."
        assert [m["content"] for m in history.messages] == [
            "What is the capital of France?",
            "Paris.",
            "And Spain?",
            "Madrid.",  # the correction, not the original
        ]
        assert history.generation_ids == {1: regenerated.id, 3: last.id}  # the newest answer to each context

        assert conversations.open(cid, Principal("admin", "admin")).messages == history.messages
        from feedback.errors import NotFound

        with pytest.raises(NotFound):
            conversations.open(cid, Principal("rater", "bob"))
        assert conversations.owned("bob") == []
