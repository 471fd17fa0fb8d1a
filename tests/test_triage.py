"""Feedback triage at scale (issue 16, item 3): votes found by kind, model, rater, reason, value and time,
newest first, in keyset pages that neither repeat nor skip a vote while new votes arrive; bad filter values
named; each filter read from an index; the leaderboard fitted from counts aggregated in SQL; and
GET /v1/feedback on a real server (an admin sees everyone's votes, a rater only their own).

Run: .venv/bin/python -m pytest tests/test_triage.py -q
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from feedback.errors import Invalid
from feedback.leaderboard import fit_leaderboard
from feedback.store import Store
from feedback.vote_search import VoteQuery

MODELS = ("base", "ad-1", "ad-2")


@pytest.fixture
def voted(store: Store) -> dict:
    """Every kind of vote by two raters over three models' answers to six prompts, some with reasons."""
    made: dict = {"votes": [], "models": {}}
    for p in range(6):
        prompt = [{"role": "user", "content": f"question {p}"}]
        ids = [store.add_generation(prompt=prompt, model=m, text=f"{m} answers {p}").id for m in MODELS]
        for g, m in zip(ids, MODELS):
            made["models"][g] = m
        rater = "alice" if p % 2 else "bob"
        made["votes"] += [
            store.add_thumbs(
                ids[0], "down", rater=rater, tags=["too long"] if p < 3 else ["Too-Long", "wrong"]
            ),
            store.add_thumbs(ids[1], "up", rater=rater, tags=["helpful"] if p % 3 == 0 else []),
            store.add_pairwise(ids[1], ids[2], "ab"[p % 2], rater=rater, tags=["wrong"] if p == 4 else []),
            store.add_ranking([ids[2], [ids[0], ids[1]]], rater=rater),
            store.add_edit(ids[2], f"a better answer {p}", rater=rater),
        ]
    return made


def models_of(vote, voted) -> set[str]:
    return {voted["models"][g] for g in vote.generation_ids}


def everything(store: Store, query: VoteQuery, limit: int = 4) -> list[int]:
    """Every page of a query, followed by cursor."""
    ids, cursor = [], None
    while True:
        page = store.search_votes(query, cursor=cursor, limit=limit)
        ids += [v.id for v in page.votes]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_each_filter_finds_exactly_its_votes_newest_first(store, voted):
    votes = sorted(voted["votes"], key=lambda v: (v.created_at, v.id), reverse=True)
    cases = {
        VoteQuery(): votes,
        VoteQuery(kind="thumbs"): [v for v in votes if v.kind == "thumbs"],
        VoteQuery(kind="thumbs", value="down"): [
            v for v in votes if v.kind == "thumbs" and v.value == "down"
        ],
        VoteQuery(value="a"): [v for v in votes if v.value == "a"],
        VoteQuery(rater="alice"): [v for v in votes if v.rater == "alice"],
        VoteQuery(model="ad-2"): [v for v in votes if "ad-2" in models_of(v, voted)],
        VoteQuery(model="base", kind="ranking"): [
            v for v in votes if v.kind == "ranking" and "base" in models_of(v, voted)
        ],
        # any spelling of a reason is one reason
        VoteQuery(reason="too_long"): [v for v in votes if {"too long", "Too-Long"} & set(v.tags)],
        VoteQuery(reason="Too Long", rater="bob"): [
            v for v in votes if {"too long", "Too-Long"} & set(v.tags) and v.rater == "bob"
        ],
        VoteQuery(model="ad-2", reason="wrong"): [
            v for v in votes if v.kind == "pairwise" and "wrong" in v.tags
        ],
        VoteQuery(model="nobody"): [],
    }
    for query, expected in cases.items():
        assert everything(store, query) == [v.id for v in expected], query
    middle = votes[len(votes) // 2].created_at
    in_range = everything(store, VoteQuery(since=votes[-5].created_at, until=middle))
    assert in_range == [v.id for v in votes if votes[-5].created_at <= v.created_at < middle]


def test_pages_neither_repeat_nor_skip_votes_while_new_ones_arrive(store, voted):
    before = everything(store, VoteQuery(kind="thumbs"))
    pages, cursor, new = [], None, []
    g = store.add_generation(prompt=[{"role": "user", "content": "late"}], model="ad-1", text="late")
    while True:
        page = store.search_votes(VoteQuery(kind="thumbs"), cursor=cursor, limit=3)
        pages += [v.id for v in page.votes]
        # a new vote between every two pages: an OFFSET would shift every later page by one
        new.append(store.add_thumbs(g.id, "up" if len(new) % 2 else "down", rater=f"late-{len(new)}").id)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == before and len(set(pages)) == len(pages)
    assert everything(store, VoteQuery(kind="thumbs"))[: len(new)] == new[::-1]  # newest first


def test_replaced_votes_are_listed_only_when_asked(store, voted):
    first = voted["votes"][0]
    again = store.add_thumbs(first.generation_ids[0], "up", rater=first.rater)
    assert first.id not in everything(store, VoteQuery(rater=first.rater))
    assert {first.id, again.id} <= set(everything(store, VoteQuery(rater=first.rater, include_replaced=True)))


@pytest.mark.parametrize(
    ("query", "cursor", "param", "named"),
    [
        (VoteQuery(kind="like"), None, "kind", "'like'"),
        (VoteQuery(value="sideways"), None, "value", "'sideways'"),
        (VoteQuery(kind="thumbs", value="a"), None, "value", "'a'"),
        (VoteQuery(kind="ranking", value="up"), None, "value", "'up'"),
        (VoteQuery(since="yesterday"), None, "since", "'yesterday'"),
        (VoteQuery(until="2025-13-40"), None, "until", "'2025-13-40'"),
        (VoteQuery(since="2025-02-01", until="2025-01-01"), None, "since", "'2025-02-01'"),
        (VoteQuery(), "not-a-cursor", "cursor", "'not-a-cursor'"),
        (VoteQuery(reason=" "), None, "reason", "reason is empty"),
    ],
)
def test_a_bad_filter_value_is_named(store, query, cursor, param, named):
    with pytest.raises(Invalid) as caught:
        store.search_votes(query, cursor=cursor)
    assert caught.value.param == param and named in caught.value.message


def test_times_in_any_zone_compare_as_utc(store, voted):
    newest = store.search_votes(VoteQuery(), limit=1).votes[0]
    assert store.search_votes(VoteQuery(until=newest.created_at)).votes[0].id != newest.id
    shifted = newest.created_at.replace("Z", "")  # naive = UTC
    assert store.search_votes(VoteQuery(since=shifted), limit=1).votes[0].id == newest.id
    assert store.search_votes(VoteQuery(since="2999-01-01T00:00:00+02:00")).votes == []


def test_every_filter_reads_an_index_in_page_order(store, voted):
    """A page of 50 over 100,000 votes stays fast when no filter scans the table or sorts the matches
    (bench/store.py measures it): each query plan walks an index in (created_at, id) order."""
    queries = [
        VoteQuery(),
        VoteQuery(kind="pairwise", value="a"),
        VoteQuery(rater="alice"),
        VoteQuery(model="ad-1"),
        VoteQuery(reason="too_long"),
        VoteQuery(model="ad-1", reason="wrong"),
        VoteQuery(since="2020-01-01", until="2999-01-01"),
    ]
    captured = []
    db = store._read()
    original = db.query

    def spy(sql, params=()):
        captured.append((sql, params))
        return original(sql, params)

    db.query = spy
    try:
        for q in queries:
            store.search_votes(q, cursor=store.search_votes(q, limit=1).next_cursor, limit=50)
    finally:
        db.query = original
    for sql, params in captured:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()]
        # "SCAN v USING INDEX idx_votes_recent" walks the index in page order; a bare "SCAN v" reads all
        assert not any(
            (step.startswith("SCAN") and "INDEX" not in step) or "TEMP B-TREE" in step for step in plan
        ), (sql, plan)


def test_an_older_store_gets_its_votes_indexed_by_model_and_reason(tmp_path, voted, store):
    """Migration 0006 fills the model and reason tables from the votes already stored."""
    expected = everything(store, VoteQuery(reason="too_long"))
    path = store.path
    store.close()
    import sqlite3

    with sqlite3.connect(path) as conn:  # back to a file from before 0006
        for name in (
            "idx_votes_recent",
            "idx_votes_kind_recent",
            "idx_votes_rater_recent",
            "idx_votes_pairwise_cells",
        ):
            conn.execute(f"DROP INDEX {name}")
        conn.execute("DROP TABLE vote_models")
        conn.execute("DROP TABLE vote_reasons")
        conn.execute("DELETE FROM _migrations WHERE name = '0006_vote_triage'")
    with Store(path) as reopened:
        assert reopened.migrations_applied == ["0006_vote_triage"]
        assert everything(reopened, VoteQuery(reason="too_long")) == expected and expected
        assert len(everything(reopened, VoteQuery(model="ad-2"))) == 6 * 3  # pairwise, ranking, edit


def test_the_leaderboard_from_sql_counts_equals_the_one_from_every_vote(store, voted):
    import random

    rng = random.Random(3)
    gens = [
        [
            store.add_generation(prompt=[{"role": "user", "content": f"b{p}"}], model=m, text=m).id
            for m in MODELS
        ]
        for p in range(20)
    ]
    for i in range(300):
        ids = gens[i % 20]
        a, b = rng.sample(range(3), 2)
        store.add_pairwise(ids[a], ids[b], rng.choice(["a", "b", "tie", "both_bad"]), rater=f"r{i // 20}")
    store.add_pairwise(gens[0][0], store.add_generation(prompt=[{"role": "user", "content": "b0"}], model="base",
                       text="again").id, "a", rater="self")  # fmt: skip
    by_vote = fit_leaderboard(store.pairwise_comparisons(), anchor="base", rounds=50)
    by_count = fit_leaderboard(store.pairwise_counts(), anchor="base", rounds=50)
    assert len(store.pairwise_counts()) < len(store.pairwise_comparisons())
    assert by_count == by_vote
    assert by_count.n_uncounted == 1 and by_count.n_votes == 300 + 6  # and the fixture's 6 arena votes


# ----- GET /v1/feedback on a real server ------------------------------------------------------------------


def get(hub, status: int = 200, token: str | None = None, **params) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{hub.url}/v1/feedback", params=params, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    return response.json()


def test_the_api_pages_and_filters_and_shows_a_rater_only_their_own(secured_hub):
    with Store(secured_hub.data_dir / "feedback.db") as store:
        raters = [store.add_rater(f"triage-{uuid.uuid4().hex[:6]}").name for _ in range(2)]
        keys = [store.create_api_key(r)[1] for r in raters]
        model = f"triage-model-{uuid.uuid4().hex[:6]}"
        mine = []
        for p in range(7):
            g = store.add_generation(prompt=[{"role": "user", "content": f"t{p}"}], model=model, text="x").id
            mine.append(store.add_thumbs(g, "down", rater=raters[0], tags=["too long"] if p % 2 else []).id)
            store.add_thumbs(g, "up", rater=raters[1])

    # the admin sees everyone's votes on the model; a page at a time, by cursor
    seen, cursor = [], None
    while True:
        page = get(
            secured_hub, token="test-admin", model=model, limit=3, **({"cursor": cursor} if cursor else {})
        )
        seen += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert (
        len(seen) == 14 and len({v["id"] for v in seen}) == 14 and {v["rater"] for v in seen} == set(raters)
    )
    reasoned = get(
        secured_hub, token="test-admin", model=model, reason="too_long", type="thumbs", value="down"
    )
    assert [v["id"] for v in reasoned["data"]] == [i for n, i in enumerate(mine) if n % 2][::-1]

    # a rater sees their own votes only, whatever they filter by; naming another rater is refused
    own = get(secured_hub, token=keys[1], model=model)["data"]
    assert len(own) == 7 and {v["rater"] for v in own} == {raters[1]}
    assert get(secured_hub, token=keys[1], reason="too_long")["data"] == []
    refused = get(secured_hub, 403, token=keys[1], rater=raters[0])["error"]
    assert refused["param"] == "rater" and raters[0] in refused["message"]

    # bad values are named
    for params, status, param, named in [
        ({"value": "sideways"}, 422, "value", "sideways"),
        ({"type": "thumbs", "value": "a"}, 422, "value", "'a'"),
        ({"since": "last tuesday"}, 422, "since", "last tuesday"),
        ({"cursor": "garbage"}, 422, "cursor", "garbage"),
        ({"type": "like"}, 400, "type", "like"),
        ({"limit": "0"}, 400, "limit", "0"),
        ({"offset": "50"}, 400, "offset", "50"),
    ]:
        error = get(secured_hub, status, token="test-admin", **params)["error"]
        assert error["param"] in (param, f"query.{param}") and named in error["message"], (params, error)


def test_the_lineage_names_the_model_and_generation_of_each_answer(secured_hub):
    with Store(secured_hub.data_dir / "feedback.db") as store:
        prompt = [{"role": "user", "content": f"lineage {uuid.uuid4().hex}"}]
        a = store.add_generation(prompt=prompt, model="base", text="one")
        b = store.add_generation(prompt=prompt, model="unregistered-adapter", text="two")
        vote = store.add_pairwise(a.id, b.id, "b", rater="api")
    body = httpx.get(
        f"{secured_hub.url}/v1/feedback/{vote.id}/lineage", headers={"Authorization": "Bearer test-admin"}
    ).json()
    answers = body["answers"]
    assert [(x["generation"], x["model"], x["text"]) for x in answers] == [
        (a.id, "base", "one"),
        (b.id, "unregistered-adapter", "two"),
    ]
    assert answers[0]["adapter"] is None and body["vote"]["winner"] == "b"
