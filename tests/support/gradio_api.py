"""Calls the hub's Gradio UI events over raw HTTP, the way its page (or anyone bypassing the page) does: log
in at /login, read /config, join the queue at /gradio_api/queue/join and read the event's messages from
/gradio_api/queue/data; events outside the queue go through /gradio_api/run/predict. No browser, no
gradio_client: a test sees exactly what the server answers.

    ui = GradioSession(url).login("admin", "pw")
    outcome = ui.call(ui.event("on_promote"), ["my-adapter", False, None])
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    """One UI event listener (a Gradio dependency) as /config describes it."""

    fn_index: int
    api_name: str
    queue: bool
    inputs: list[int]
    targets: list[tuple[int | None, str]]
    trigger: str  # e.g. "Button#adapters-promote.click", "load", "Timer.tick"


@dataclass
class Outcome:
    """What a call got: the HTTP status of the join (or of the direct call), then the event's result."""

    status: int
    ok: bool = False
    data: list[Any] | None = None
    error: str | None = None  # the gr.Error's message, Gradio's refusal, or the HTTP body
    messages: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status} ok={self.ok} error={self.error!r}"


class GradioSession:
    """One browser session: its cookies (after a login) and its own session hash, so gr.State is its own."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers or {}, timeout=timeout)
        self.session_hash = uuid.uuid4().hex[:11]
        self._config: dict | None = None

    def close(self) -> None:
        self.client.close()

    def login(self, username: str, password: str) -> GradioSession:
        response = self.client.post("/login", data={"username": username, "password": password})
        assert response.status_code == 200, f"login as {username}: {response.status_code} {response.text}"
        return self

    def config(self) -> dict:
        if self._config is None:
            response = self.client.get("/config")
            response.raise_for_status()
            self._config = response.json()
        return self._config

    def components(self) -> dict[int, dict]:
        return {c["id"]: c for c in self.config()["components"]}

    def events(self) -> list[Event]:
        components = self.components()

        def name(target: int | None, kind: str) -> str:
            component = components.get(target) if target is not None else None
            if component is None:
                return kind
            props = component.get("props", {})
            label = props.get("elem_id") or props.get("label") or ""
            return f"{component['type']}#{label}.{kind}" if label else f"{component['type']}.{kind}"

        found = []
        for dependency in self.config()["dependencies"]:
            targets = [(t[0], t[1]) for t in dependency["targets"]]
            found.append(
                Event(
                    fn_index=dependency["id"],
                    api_name=dependency["api_name"],
                    queue=dependency.get("queue", True) is not False,
                    inputs=list(dependency["inputs"]),
                    targets=targets,
                    trigger=" ".join(name(t, kind) for t, kind in targets),
                )
            )
        return found

    def event(self, api_name: str) -> Event:
        return next(e for e in self.events() if e.api_name == api_name)

    def default_inputs(self, event: Event) -> list[Any]:
        """Each input component's value as the page would send it (None for gr.State: kept by the server)."""
        components = self.components()
        values = []
        for component_id in event.inputs:
            component = components[component_id]
            values.append(None if component["type"] == "state" else component.get("props", {}).get("value"))
        return values

    def _body(self, event: Event, data: list[Any], event_data: dict | None) -> dict:
        target = event.targets[0][0] if event.targets else None
        return {
            "data": data,
            "fn_index": event.fn_index,
            "session_hash": self.session_hash,
            "event_data": event_data,
            "trigger_id": target,
        }

    def join(
        self, event: Event, data: list[Any] | None = None, event_data: dict | None = None
    ) -> httpx.Response:
        """Only the join: the answer says whether the queue took the event (and its id)."""
        data = self.default_inputs(event) if data is None else data
        return self.client.post("/gradio_api/queue/join", json=self._body(event, data, event_data))

    def results(self) -> list[dict]:
        """Read this session's queue messages until every event it joined has completed."""
        messages = []
        with self.client.stream(
            "GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}
        ) as r:
            if r.status_code != 200:
                r.read()
                return [{"msg": "http_error", "status": r.status_code, "text": r.text}]
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line.removeprefix("data:").strip())
                messages.append(message)
                if message.get("msg") in ("close_stream", "unexpected_error"):
                    break
        return messages

    def call(self, event: Event, data: list[Any] | None = None, event_data: dict | None = None) -> Outcome:
        """Run one event to its end, as the page would, and say what came back."""
        data = self.default_inputs(event) if data is None else data
        if not event.queue:
            response = self.client.post("/gradio_api/run/predict", json=self._body(event, data, event_data))
            if response.status_code != 200:
                return Outcome(response.status_code, error=_error_text(response))
            return Outcome(200, ok=True, data=response.json().get("data"))
        joined = self.join(event, data, event_data)
        if joined.status_code != 200:
            return Outcome(joined.status_code, error=_error_text(joined))
        return self.outcome()

    def outcome(self) -> Outcome:
        """What the event this session joined last came to (read from its queue messages)."""
        messages = self.results()
        done = [m for m in messages if m.get("msg") == "process_completed"]
        if not done:
            return Outcome(200, error=f"no completion: {messages[-3:]}", messages=messages)
        last = done[-1]
        output = last.get("output") or {}
        if last.get("success"):
            return Outcome(200, ok=True, data=output.get("data"), messages=messages)
        return Outcome(200, error=str(output.get("error")), messages=messages)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:300]
    return str(body)[:300]
