"""POST /v1/feedback, GET /v1/feedback[/{id}] and GET /v1/leaderboard on a real `tunehub serve`: API users rate
what the API gave them (the `id` of a chat or text completion, with the choice index when n > 1), get the
stored vote's id back, read their own votes, and nobody else's; bad bodies get OpenAI's error envelope with
400 (wrong shape), 404 (unknown answer) or 422 (answers that cannot be compared).

Run: .venv/bin/python -m pytest tests/test_feedback_api.py -q
"""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from feedback.store import Store
from tests.support.cli import tunehub_ok
from tests.support.openai_schema import validate

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_id(hub) -> str:
    return httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ref(response_id: str, choice: int = 0) -> dict:
    return {"generation_id": response_id, "choice": choice}


def vote(hub, body: dict, status: int = 200, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{hub.url}/v1/feedback", json=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    if status != 200:
        validate(response.json(), "ErrorResponse")
        return response.json()["error"]
    return response.json()


def get(hub, path: str, status: int = 200, token: str | None = None, **params) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{hub.url}{path}", params=params, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    return response.json()


def ask(client, model: str, n: int = 1, content: str = "What is the capital of France?"):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        n=n,
        max_tokens=12,
        temperature=1.0,
    )


# ----- votes on what the API returned ----------------------------------------------------------------------


def test_thumbs_on_a_chat_completion_is_stored_and_read_back(hub, client, base_id):
    completion = ask(client, base_id)
    body = {
        "type": "thumbs",
        "generation": ref(completion.id),
        "value": "down",
        "reasons": ["wrong", "too long"],
        "comment": "Paris",
    }
    stored = vote(hub, body)
    assert isinstance(stored["id"], int)
    assert stored["object"] == "feedback"
    assert stored["generation"] == ref(completion.id)
    assert (stored["value"], stored["reasons"], stored["comment"]) == ("down", ["wrong", "too long"], "Paris")
    assert (stored["rater"], stored["source"], stored["active"]) == ("local", "api", True)

    assert get(hub, f"/v1/feedback/{stored['id']}") == stored
    mine = get(hub, "/v1/feedback", type="thumbs")
    assert mine["object"] == "list"
    assert stored in mine["data"]


def test_a_streamed_answer_can_be_rated_as_soon_as_the_stream_ends(hub, client, base_id):
    stream = client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=8, stream=True)
    response_id = {chunk.id for chunk in stream}.pop()
    stored = vote(hub, {"type": "thumbs", "generation": ref(response_id), "value": "up"})
    assert stored["generation"] == ref(response_id)


def test_text_completion_ids_can_be_rated(hub, base_id):
    completion = httpx.post(
        f"{hub.url}/v1/completions", json={"model": base_id, "prompt": "Hello", "max_tokens": 6}, timeout=60
    ).json()
    stored = vote(hub, {"type": "thumbs", "generation": ref(completion["id"]), "value": "up"})
    assert stored["value"] == "up"


def test_choices_of_one_response_compared_ranked_and_corrected(hub, client, base_id):
    completion = ask(client, base_id, n=3)
    rid = completion.id
    pair = vote(hub, {"type": "pairwise", "a": ref(rid, 0), "b": ref(rid, 2), "winner": "b"})
    assert (pair["a"], pair["b"], pair["winner"]) == (ref(rid, 0), ref(rid, 2), "b")

    order = [ref(rid, 1), [ref(rid, 0), ref(rid, 2)]]  # 1 best, 0 and 2 tied behind it
    ranking = vote(hub, {"type": "ranking", "order": order, "comment": "one is closest"})
    assert ranking["order"] == order
    assert ranking["comment"] == "one is closest"

    text = completion.choices[1].message.content + " (corrected)"
    edit = vote(hub, {"type": "edit", "generation": ref(rid, 1), "text": text})
    assert (edit["generation"], edit["text"]) == (ref(rid, 1), text)

    assert len({pair["conversation_id"], ranking["conversation_id"], edit["conversation_id"]}) == 1
    for kind, stored in (("pairwise", pair), ("ranking", ranking), ("edit", edit)):
        assert stored in get(hub, "/v1/feedback", type=kind)["data"]


def test_a_second_vote_on_the_same_answer_replaces_the_first(hub, client, base_id):
    rid = ask(client, base_id).id
    first = vote(hub, {"type": "thumbs", "generation": ref(rid), "value": "up"})
    second = vote(hub, {"type": "thumbs", "generation": ref(rid), "value": "down", "reasons": ["wrong"]})
    assert second["replaces"] == first["id"]
    listed = [v["id"] for v in get(hub, "/v1/feedback", type="thumbs", limit=1000)["data"]]
    assert second["id"] in listed and first["id"] not in listed
    everything = get(hub, "/v1/feedback", type="thumbs", include_replaced="true", limit=1000)["data"]
    assert first["id"] in [v["id"] for v in everything]
    assert get(hub, f"/v1/feedback/{first['id']}")["active"] is False


def test_a_withdrawn_vote_stops_counting_and_stays_stored(hub, client, base_id):
    """Issue 14: un-clicking a thumb took the icon away but kept the vote in exports. DELETE withdraws it."""
    from feedback.exports import export_dataset

    rid = ask(client, base_id).id
    up = vote(hub, {"type": "thumbs", "generation": ref(rid), "value": "up"})
    response = httpx.delete(f"{hub.url}/v1/feedback/{up['id']}", timeout=30)
    assert response.status_code == 200, response.text
    withdrawn = response.json()
    assert withdrawn["id"] == up["id"] and withdrawn["active"] is False and withdrawn["withdrawn_at"]
    assert up["id"] not in [v["id"] for v in get(hub, "/v1/feedback", type="thumbs", limit=1000)["data"]]
    assert get(hub, f"/v1/feedback/{up['id']}") == withdrawn
    with Store(hub.data_dir / "feedback.db") as store:
        kto = export_dataset(store, "kto", snapshot=False, eval_fraction=0.0)
    assert up["id"] not in kto.vote_ids, "a withdrawn vote was exported"

    again = httpx.delete(f"{hub.url}/v1/feedback/{up['id']}", timeout=30)
    assert again.status_code == 409
    assert f"vote {up['id']} is no longer active: it was withdrawn" in again.text
    replaced = vote(hub, {"type": "thumbs", "generation": ref(rid), "value": "down"})
    newer = vote(hub, {"type": "thumbs", "generation": ref(rid), "value": "up"})
    assert newer["replaces"] == replaced["id"]
    gone = httpx.delete(f"{hub.url}/v1/feedback/{replaced['id']}", timeout=30)
    assert gone.status_code == 409 and "replaced by a later vote" in gone.text
    missing = httpx.delete(f"{hub.url}/v1/feedback/999999999", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "vote_id"


def test_listing_pages_with_limit_and_cursor(hub, client, base_id):
    rid = ask(client, base_id, n=3).id
    for choice in range(3):
        vote(hub, {"type": "thumbs", "generation": ref(rid, choice), "value": "up"})
    page1 = get(hub, "/v1/feedback", limit=2)
    page2 = get(hub, "/v1/feedback", limit=2, cursor=page1["next_cursor"])
    assert len(page1["data"]) == 2 and page1["has_more"] is True
    # pages go by cursor (issue 16): an offset would silently repeat the first page, so it is refused
    assert get(hub, "/v1/feedback", status=400, offset=2)["error"]["param"] == "offset"
    ids = [v["id"] for v in page1["data"] + page2["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)


# ----- wrong shapes, unknown answers, incomparable answers --------------------------------------------------


@pytest.fixture(scope="module")
def answer(client, base_id) -> str:
    return ask(client, base_id, n=2).id


@pytest.mark.parametrize(
    "body, words",
    [
        ({"generation": {"generation_id": "x"}, "value": "up"}, "'type' must be"),
        ({"type": "stars", "generation": {"generation_id": "x"}}, "'type' must be"),
        ({"type": "thumbs", "generation": {"generation_id": "ANSWER"}, "value": "sideways"}, "value"),
        ({"type": "thumbs", "generation": {"generation_id": "ANSWER"}}, "value"),
        ({"type": "thumbs", "generation": "ANSWER", "value": "up"}, "generation"),
        (
            {"type": "thumbs", "generation": {"generation_id": "ANSWER", "choice": -1}, "value": "up"},
            "choice",
        ),
        ({"type": "thumbs", "generation": {"generation_id": "ANSWER"}, "value": "up", "stars": 5}, "stars"),
        (
            {
                "type": "pairwise",
                "a": {"generation_id": "ANSWER"},
                "b": {"generation_id": "ANSWER", "choice": 1},
            },
            "winner",
        ),
        ({"type": "ranking", "order": []}, "order"),
        ({"type": "edit", "generation": {"generation_id": "ANSWER"}, "text": ""}, "text"),
        (
            {"type": "thumbs", "generation": {"generation_id": "ANSWER"}, "value": "up", "reasons": "wrong"},
            "reasons",
        ),
    ],
)
def test_wrong_shapes_are_400(hub, answer, body, words):
    body = json.loads(json.dumps(body).replace('"ANSWER"', json.dumps(answer)))  # the real response id
    error = vote(hub, body, status=400)
    assert words in error["message"] + str(error["param"]), error
    assert error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_400(hub):
    response = httpx.post(
        f"{hub.url}/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    validate(response.json(), "ErrorResponse")


def test_unknown_answers_are_404(hub, answer):
    error = vote(hub, {"type": "thumbs", "generation": ref("chatcmpl-nope"), "value": "up"}, status=404)
    assert "chatcmpl-nope" in error["message"] and error["type"] == "not_found_error"
    error = vote(hub, {"type": "pairwise", "a": ref(answer), "b": ref(answer, 7), "winner": "a"}, status=404)
    assert "choice 7" in error["message"]
    assert get(hub, "/v1/feedback/999999999", status=404)["error"]["param"] == "vote_id"


def test_answers_that_cannot_be_compared_are_422(hub, client, base_id, answer):
    other = ask(client, base_id, content="What is 2 + 2?").id
    error = vote(hub, {"type": "pairwise", "a": ref(answer), "b": ref(other), "winner": "a"}, status=422)
    assert "different prompts" in error["message"]
    error = vote(hub, {"type": "pairwise", "a": ref(answer), "b": ref(answer), "winner": "tie"}, status=422)
    assert "both" in error["message"]
    error = vote(hub, {"type": "ranking", "order": [ref(answer), ref(answer)]}, status=422)
    assert "twice" in error["message"]
    error = vote(hub, {"type": "ranking", "order": [ref(answer, 0)]}, status=422)
    assert "between 2 and 6" in error["message"]


def test_an_edit_equal_to_the_answer_is_422(hub, client, base_id):
    completion = ask(client, base_id)
    same = completion.choices[0].message.content
    error = vote(hub, {"type": "edit", "generation": ref(completion.id), "text": same}, status=422)
    assert "equals the original" in error["message"]


# ----- the leaderboard ------------------------------------------------------------------------------------


def test_leaderboard_rates_models_from_pairwise_votes(hub):
    # two models' answers to one prompt, recorded as the hub records what it serves, then voted on over HTTP
    suffix = uuid.uuid4().hex[:6]
    alpha, beta = f"alpha-{suffix}", f"beta-{suffix}"
    prompt = [{"role": "user", "content": f"Name a colour ({suffix})"}]
    with Store(hub.data_dir / "feedback.db") as store:
        pairs = []
        for i in range(6):
            a = store.add_generation(
                prompt=prompt, model=alpha, text="red", response_id=f"chatcmpl-a{suffix}{i}"
            )
            b = store.add_generation(
                prompt=prompt, model=beta, text="rde", response_id=f"chatcmpl-b{suffix}{i}"
            )
            pairs.append((a.id, b.id))
    for i, (a, b) in enumerate(pairs):
        vote(hub, {"type": "pairwise", "a": ref(a), "b": ref(b), "winner": "b" if i == 0 else "a"})

    board = get(hub, "/v1/leaderboard", rounds=100)
    assert board["object"] == "leaderboard"
    rows = {row["model"]: row for row in board["data"]}
    assert rows[alpha]["rating"] > rows[beta]["rating"]
    assert (rows[alpha]["wins"], rows[alpha]["losses"], rows[alpha]["votes"]) == (5, 1, 6)
    assert rows[alpha]["provisional"] is True  # fewer than 20 votes
    assert rows[alpha]["lower"] <= rows[alpha]["rating"] <= rows[alpha]["upper"]
    i, j = board["models"].index(alpha), board["models"].index(beta)
    assert board["win_rate"][i][j] == pytest.approx(5 / 6, abs=1e-3)


# ----- who voted: API keys, raters, admins ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rater_key(secured_hub) -> str:
    name = f"rater-{uuid.uuid4().hex[:6]}"
    data_dir = str(secured_hub.data_dir)
    tunehub_ok("users", "add", name, "--password", "pw-" + name, "--data-dir", data_dir)
    return tunehub_ok("users", "key", name, "--data-dir", data_dir).strip()


def test_votes_are_recorded_under_the_caller_and_read_back_only_by_them(secured_hub, rater_key):
    url = secured_hub.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    rid = ask(client, model, n=2).id

    mine = vote(secured_hub, {"type": "thumbs", "generation": ref(rid), "value": "up"}, token=rater_key)
    shared = vote(
        secured_hub, {"type": "thumbs", "generation": ref(rid, 1), "value": "down"}, token="test-key"
    )
    rater = mine["rater"]
    assert rater.startswith("rater-") and shared["rater"] == "api"

    own = get(secured_hub, "/v1/feedback", token=rater_key)["data"]
    assert [v["id"] for v in own] == [mine["id"]]
    assert all(v["rater"] == "api" for v in get(secured_hub, "/v1/feedback", token="test-key")["data"])

    # someone else's vote is as good as missing; reading another rater's list needs the admin
    get(secured_hub, f"/v1/feedback/{shared['id']}", status=404, token=rater_key)
    error = get(secured_hub, "/v1/feedback", status=403, token=rater_key, rater="api")["error"]
    assert error["param"] == "rater"
    admin_view = get(secured_hub, "/v1/feedback", token="test-admin", rater=rater)["data"]
    assert [v["id"] for v in admin_view] == [mine["id"]]
    assert get(secured_hub, f"/v1/feedback/{mine['id']}", token="test-admin")["rater"] == rater

    get(secured_hub, "/v1/feedback", status=401)
    get(secured_hub, "/v1/feedback", status=401, token="th-not-a-key")


def test_only_the_rater_or_an_admin_withdraws_a_vote(secured_hub, rater_key):
    client = openai.OpenAI(base_url=secured_hub.url + "/v1", api_key="test-key", max_retries=0, timeout=60)
    rid = ask(client, client.models.list().data[0].id).id
    mine = vote(secured_hub, {"type": "thumbs", "generation": ref(rid), "value": "up"}, token=rater_key)

    def withdraw(token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.delete(f"{secured_hub.url}/v1/feedback/{mine['id']}", headers=headers, timeout=30)

    assert withdraw("test-key").status_code == 404  # someone else's vote is as good as missing
    assert get(secured_hub, f"/v1/feedback/{mine['id']}", token=rater_key)["active"] is True
    assert withdraw("test-admin").status_code == 200


def test_a_revoked_key_is_refused(secured_hub):
    name = f"gone-{uuid.uuid4().hex[:6]}"
    data_dir = str(secured_hub.data_dir)
    tunehub_ok("users", "add", name, "--data-dir", data_dir)
    key = tunehub_ok("users", "key", name, "--data-dir", data_dir).strip()
    get(secured_hub, "/v1/feedback", token=key)
    key_id = tunehub_ok("users", "keys", name, "--data-dir", data_dir).split()[0]
    tunehub_ok("users", "revoke", key_id, "--data-dir", data_dir)
    get(secured_hub, "/v1/feedback", status=401, token=key)


def test_a_rater_cannot_run_the_admin_actions_of_the_ui(secured_hub, rater_key):
    """The Data tab is hidden from raters, and its handlers refuse them too (called through Gradio's API)."""
    rater = get(secured_hub, "/v1/feedback", token=rater_key)["data"][0]["rater"]

    def call_counts(username: str, password: str) -> str:
        with httpx.Client(base_url=secured_hub.url, timeout=30) as browser:
            assert (
                browser.post("/login", data={"username": username, "password": password}).status_code == 200
            )
            event = browser.post("/gradio_api/call/counts", json={"data": []}).json()["event_id"]
            return browser.get(f"/gradio_api/call/counts/{event}").text

    assert "needs an admin" in call_counts(rater, "pw-" + rater)
    assert "event: complete" in call_counts("admin", "test-admin")
    with httpx.Client(base_url=secured_hub.url, timeout=30) as stranger:
        assert stranger.post("/login", data={"username": rater, "password": "wrong"}).status_code == 400
        assert stranger.post("/gradio_api/call/counts", json={"data": []}).status_code == 401
