"""Access control of the UI (issue 7, item 4): every Gradio event the UI registers, called straight through
Gradio's HTTP API (/gradio_api/queue/join, /gradio_api/run/predict) the way a script bypassing the page
would, as an anonymous caller, with the shared API key as a Bearer token, as a rater and as the admin, against
a real `tunehub serve` with an admin password. The page hides the admin tabs from raters; that is only
cosmetic, and these tests check that the server refuses what the page hides. An event added without a row
here fails `test_every_ui_event_has_a_row`.

Run: .venv/bin/python -m pytest tests/test_ui_access.py -q
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.gradio_api import GradioSession

API_KEY, ADMIN_PASSWORD = "test-key", "test-admin"  # what the `secured_hub` fixture starts with
RATER_PASSWORD = "rater-password-1"

RATERS = "raters"  # any signed-in user: raters and the admin
ADMIN = "admin"  # the admin only; a rater is refused by the server
REFUSED_FOR_RATER = "this needs an admin"

# api_name (Gradio names events after their handler, numbered in order of registration) -> who may run it,
# and what it is. Nobody signed out may run anything: Gradio's login check refuses every event with 401.
UI_EVENTS: dict[str, tuple[str, str]] = {
    # Chat
    "follow_models": (RATERS, "Chat: refresh the model list (button)"),
    "follow_models_1": (RATERS, "Chat: the model list follows the engine (picker focused)"),
    "add_user": (RATERS, "Chat: the prompt enters the conversation (Enter)"),
    "locked": (RATERS, "Chat: Send hidden and Stop shown while answering (Enter; no data)"),
    "answer": (RATERS, "Chat: generate the answer (after Enter)"),
    "unlocked": (RATERS, "Chat: Send back after the answer (Enter; no data)"),
    "add_user_1": (RATERS, "Chat: the prompt enters the conversation (Send)"),
    "locked_1": (RATERS, "Chat: Send hidden and Stop shown while answering (Send; no data)"),
    "answer_1": (RATERS, "Chat: generate the answer (after Send)"),
    "unlocked_1": (RATERS, "Chat: Send back after the answer (Send; no data)"),
    "drop_last_answer": (RATERS, "Chat: regenerate drops the last answer"),
    "locked_2": (RATERS, "Chat: Send hidden and Stop shown while answering (Regenerate; no data)"),
    "answer_2": (RATERS, "Chat: generate the answer again"),
    "unlocked_2": (RATERS, "Chat: Send back after the answer (Regenerate; no data)"),
    "on_stop": (RATERS, "Chat: Stop the answer being generated (no data)"),
    "after_stop": (RATERS, "Chat: the stopped answer, stored as shown, can be rated"),
    "unnamed": (RATERS, "Chat: Stop cancels the running answer (Gradio's own cancel event, no handler)"),
    "on_like": (RATERS, "Chat: thumbs up or down"),
    "on_reasons": (RATERS, "Chat: reasons for the thumb"),
    "on_edit": (RATERS, "Chat: correct the last answer"),
    "on_open": (RATERS, "Chat: reopen one of one's own conversations"),
    "lambda": (RATERS, "Chat: new conversation"),
    "list_conversations": (RATERS, "Chat: one's own conversations (page load)"),
    "follow_models_2": (RATERS, "Chat: the model list (page load)"),
    # Arena
    "ask": (RATERS, "Arena: both models answer (Enter)"),
    "ask_1": (RATERS, "Arena: both models answer (Send)"),
    "handler": (RATERS, "Arena: vote A"),
    "handler_1": (RATERS, "Arena: vote tie"),
    "handler_2": (RATERS, "Arena: vote both bad"),
    "handler_3": (RATERS, "Arena: vote B"),
    "reset": (RATERS, "Arena: new battle"),
    "availability": (RATERS, "Arena: why there is nothing to compare with one model (page load)"),
    # Rank
    "on_sample": (RATERS, "Rank: sample N answers (button)"),
    "on_sample_1": (RATERS, "Rank: sample N answers (Enter)"),
    "on_submit": (RATERS, "Rank: submit the ranking"),
    "follow_rank_models": (RATERS, "Rank: the model list (page load)"),
    "follow_rank_models_1": (RATERS, "Rank: the model list follows the engine (picker focused)"),
    # Leaderboard
    "show": (RATERS, "Leaderboard: refresh"),
    "show_1": (RATERS, "Leaderboard: tab selected"),
    "top_reasons": (RATERS, "Leaderboard: top reasons per model (refresh)"),
    "top_reasons_1": (RATERS, "Leaderboard: top reasons per model (tab selected)"),
    # Data (admin)
    "counts": (ADMIN, "Data: vote counts by kind and rater (refresh)"),
    "counts_1": (ADMIN, "Data: vote counts (tab selected)"),
    "show_preview": (ADMIN, "Data: export preview (kind changed)"),
    "show_preview_1": (ADMIN, "Data: export preview (format changed)"),
    "show_preview_2": (ADMIN, "Data: export preview (tab selected)"),
    "download": (ADMIN, "Data: export and download"),
    "formats_for": (ADMIN, "Data: the formats the chosen dataset can be written in (kind changed)"),
    "search_votes": (ADMIN, "Data: search votes with filters"),
    "next_votes": (ADMIN, "Data: the next page of votes"),
    "open_vote": (ADMIN, "Data: open a vote's answers and lineage"),
    # Train (admin)
    "apply_preset": (ADMIN, "Train: preset changed"),
    "apply_preset_1": (ADMIN, "Train: stage changed"),
    "show_estimate": (ADMIN, "Train: memory estimate (method)"),
    "show_estimate_1": (ADMIN, "Train: memory estimate (batch)"),
    "show_estimate_2": (ADMIN, "Train: memory estimate (length)"),
    "show_estimate_3": (ADMIN, "Train: memory estimate (rank)"),
    "show_estimate_4": (ADMIN, "Train: memory estimate (tab selected)"),
    "parents": (ADMIN, "Train: adapters to start from"),
    "show_rows": (ADMIN, "Train: the rows the stage will train on (stage changed)"),
    "show_rows_1": (ADMIN, "Train: the rows the stage will train on (data source changed)"),
    "show_rows_2": (ADMIN, "Train: the rows the stage will train on (tab selected)"),
    "show_rows_3": (ADMIN, "Train: the rows the stage will train on (reasons to leave out changed)"),
    "lambda_1": (RATERS, "Train: start the poll timer (no data: a fixed UI update)"),
    "show_command": (ADMIN, "Train: the job's command (GPUs)"),
    "show_command_1": (ADMIN, "Train: the job's command (strategy)"),
    "submit": (ADMIN, "Train: start a training job"),
    "refresh": (ADMIN, "Train: the jobs table (after start)"),
    "refresh_1": (ADMIN, "Train: the jobs table (timer)"),
    "refresh_2": (ADMIN, "Train: the jobs table (job picked)"),
    "cancel_job": (ADMIN, "Train: cancel a job"),
    "refresh_3": (ADMIN, "Train: the jobs table (after cancel)"),
    # Adapters (admin)
    "on_replay": (ADMIN, "Adapters: regression replay"),
    "on_check": (ADMIN, "Adapters: check the promotion rule"),
    "on_vote_lineage": (ADMIN, "Adapters: which adapters a vote trained (any rater's vote)"),
    "show_replay": (ADMIN, "Adapters: the stored replay"),
    "on_export": (ADMIN, "Adapters: merge and export weights"),
    "weights_for": (ADMIN, "Adapters: the weight types the export format offers (format changed)"),
    "listing": (ADMIN, "Adapters: the table (refresh)"),
    "listing_1": (ADMIN, "Adapters: the table (tab selected)"),
    "show_lineage": (ADMIN, "Adapters: lineage"),
    "show_verdict": (ADMIN, "Adapters: the promotion rule's verdict (adapter picked)"),
    "on_promote": (ADMIN, "Adapters: promote (pressed twice against a rule not met yet)"),
    "listing_2": (ADMIN, "Adapters: the table (after promote)"),
    "on_load": (ADMIN, "Adapters: load into the engine"),
    "listing_3": (ADMIN, "Adapters: the table (after load)"),
    "on_unload": (ADMIN, "Adapters: unload"),
    "listing_4": (ADMIN, "Adapters: the table (after unload)"),
    "on_rollback": (ADMIN, "Adapters: roll back the promotion"),
    "listing_5": (ADMIN, "Adapters: the table (after rollback)"),
    "show_promotions": (ADMIN, "Adapters: the promotions plot (refresh)"),
    "show_promotions_1": (ADMIN, "Adapters: the promotions plot (tab selected)"),
    "show_promotions_2": (ADMIN, "Adapters: the promotions plot (the table changed)"),
    # the page
    "lambda_2": (RATERS, "stop the Train poll timer (Chat tab)"),
    "lambda_3": (RATERS, "stop the Train poll timer (Arena tab)"),
    "lambda_4": (RATERS, "stop the Train poll timer (Rank tab)"),
    "lambda_5": (RATERS, "stop the Train poll timer (Leaderboard tab)"),
    "lambda_6": (RATERS, "stop the Train poll timer (Data tab)"),
    "lambda_7": (RATERS, "stop the Train poll timer (Adapters tab)"),
    "load": (RATERS, "who is signed in; the admin tabs shown to admins"),
}

SNEAKY_JOB = "sneaky-ui-job"


def inputs_for(ui: GradioSession, api_name: str, role: str) -> list | None:
    """The page's default inputs, except where the admin's call would do real work: the admin's job has a
    bad stage (refused by the spec check, so no training runs here), while the rater sends a valid job,
    which only the admin check stands between and a queued job would show."""
    if api_name != "submit":
        return None
    data = ui.default_inputs(ui.event(api_name))
    data[4] = SNEAKY_JOB  # the adapter name
    if role == ADMIN:
        data[0] = "no-such-stage"
    return data


@pytest.fixture(scope="module")
def rater(secured_hub) -> str:
    """A rater with a UI password, made in the server's store (WAL: the running server sees it at once)."""
    from feedback.store import Store

    with Store(secured_hub.data_dir / "feedback.db") as store:
        return store.add_rater(f"ui-{uuid.uuid4().hex[:6]}", password=RATER_PASSWORD).name


@pytest.fixture(scope="module")
def sessions(secured_hub, rater):
    made = {
        "anonymous": GradioSession(secured_hub.url),
        "api": GradioSession(secured_hub.url, headers={"Authorization": f"Bearer {API_KEY}"}),
        "rater": GradioSession(secured_hub.url).login(rater, RATER_PASSWORD),
        "admin": GradioSession(secured_hub.url).login("admin", ADMIN_PASSWORD),
    }
    yield made
    for session in made.values():
        session.close()


def test_every_ui_event_has_a_row(sessions):
    events = {e.api_name for e in sessions["admin"].events()}
    assert events - set(UI_EVENTS) == set(), "UI events without a row in the UI access matrix"
    assert set(UI_EVENTS) - events == set(), "rows for UI events the UI no longer has"


def test_the_page_config_needs_a_login(secured_hub, sessions):
    for role in ("anonymous", "api"):
        for path in ("/config", "/gradio_api/info"):
            response = sessions[role].client.get(path)
            assert response.status_code == 401, (role, path, response.status_code)


@pytest.mark.parametrize("role", ["anonymous", "api"])
def test_signed_out_callers_can_run_no_event(sessions, role):
    """Nobody without a login runs anything, the shared API key included: the UI takes no Bearer token."""
    admin, caller = sessions["admin"], sessions[role]
    failures = []
    for event in admin.events():
        data = admin.default_inputs(event)
        body = {"data": data, "fn_index": event.fn_index, "session_hash": caller.session_hash}
        path = "/gradio_api/queue/join" if event.queue else "/gradio_api/run/predict"
        response = caller.client.post(path, json=body)
        named = caller.client.post(f"/gradio_api/call/{event.api_name}", json={"data": data})
        if response.status_code != 401 or named.status_code != 401:
            failures.append(f"{event.api_name} {event.trigger}: {response.status_code}, {named.status_code}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("role", ["rater", "admin"])
def test_ui_access_matrix(secured_hub, sessions, role):
    """Each event as a signed-in rater and as the admin: refused on the server exactly where the row says
    ADMIN and the caller is a rater; never refused for the admin. Other errors (an empty prompt, no adapter
    picked) are about the input and count as let through."""
    session = sessions[role]
    failures = []
    for event in sessions["admin"].events():
        who, what = UI_EVENTS[event.api_name]
        outcome = session.call(event, inputs_for(session, event.api_name, role))
        refused = outcome.error is not None and REFUSED_FOR_RATER in outcome.error
        # (Gradio answers an error of an event outside the queue with HTTP 500 and its message)
        ran = outcome.status == 200 or (not event.queue and outcome.error is not None)
        assert ran, f"{role} {event.api_name} ({what}): {outcome}"
        should_refuse = who == ADMIN and role == "rater"
        if refused != should_refuse:
            failures.append(f"{role} {event.api_name} ({what}, {event.trigger}): {outcome}")
    assert not failures, "\n".join(failures)
    if role == "rater":
        jobs = httpx.get(f"{secured_hub.url}/v1/jobs", headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"})
        assert SNEAKY_JOB not in [job["name"] for job in jobs.json()["data"]], "a rater queued a job"


def test_a_rater_cannot_open_another_raters_conversation(secured_hub, sessions, rater):
    from feedback.store import Store

    with Store(secured_hub.data_dir / "feedback.db") as store:
        theirs = store.add_conversation(title="private", rater="someone-else", source="ui").id
        mine = store.add_conversation(title="mine", rater=rater, source="ui").id
    ui = sessions["rater"]
    listed = ui.call(ui.event("list_conversations"))  # also what this session's dropdown now offers
    choices = [value for _, value in listed.data[0]["choices"]]
    assert mine in choices and theirs not in choices
    refused = ui.call(ui.event("on_open"), [theirs])
    # refused by Gradio (not one of this session's choices) or, past that, by Conversations.open (not found)
    assert not refused.ok and ("not found" in refused.error or "not in the list" in refused.error), refused
    opened = ui.call(ui.event("on_open"), [mine])
    assert opened.ok, opened


def test_queued_events_cannot_skip_the_queue(sessions):
    """A queued event posted to /gradio_api/run/NAME would skip the queue and its limits: refused."""
    ui = sessions["admin"]
    event = ui.event("answer")
    response = ui.client.post(f"/gradio_api/run/{event.api_name}", json={"data": ui.default_inputs(event)})
    assert response.status_code == 404, response.text
    assert "does not accept direct HTTP POST" in response.text
