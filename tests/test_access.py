"""Access control (issue 7, item 4) against a real `tunehub serve` with an API key and an admin password:
every HTTP route of the app, for an anonymous caller, a rater (their own API key from the store), the
shared API key and the admin password. A route added without a row here fails
`test_every_route_has_a_row`. Also: secrets never show up in the server log, error bodies, /metrics or the
database; CORS is closed to foreign origins; the UI asks for a login.

(Binding to a non-loopback address without both secrets is refused: tests/test_cli.py. Every UI event, called
through Gradio's API as each role: tests/test_ui_access.py.)

Run: .venv/bin/python -m pytest tests/test_access.py -q
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount

from tests.support.no_engine import NoEngine
from tests.support.openai_schema import validate

API_KEY, ADMIN_PASSWORD = "test-key", "test-admin"  # what the `secured_hub` fixture starts with
ROLES = ("anonymous", "rater", "api", "admin")

# what each caller gets, by role: "ok" means the route let it through (a 2xx, or an error about the
# request itself such as 400/404, never 401/403)
OPEN = {"anonymous": "ok", "rater": "ok", "api": "ok", "admin": "ok"}
KEYED = {"anonymous": 401, "rater": "ok", "api": "ok", "admin": "ok"}
ADMIN_ONLY = {"anonymous": 401, "rater": 403, "api": 403, "admin": "ok"}

MISSING_JOB = "job-0000000000000000"


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


# (method, route path) -> (concrete path, JSON body or None, expectation by role)
def matrix(model: str) -> dict[tuple[str, str], tuple[str, dict | None, dict]]:
    unknown_ref = {"generation_id": "chatcmpl-unknown", "choice": 0}
    return {
        ("GET", "/health"): ("/health", None, OPEN),
        ("GET", "/health/live"): ("/health/live", None, OPEN),
        ("GET", "/openapi.json"): ("/openapi.json", None, OPEN),  # the API's shape, no data
        ("GET", "/metrics"): ("/metrics", None, KEYED),
        ("GET", "/v1/models"): ("/v1/models", None, KEYED),
        ("GET", "/v1/models/{model_id:path}"): (f"/v1/models/{model}", None, KEYED),
        ("POST", "/v1/chat/completions"): ("/v1/chat/completions", chat(model), KEYED),
        ("POST", "/v1/completions"): (
            "/v1/completions",
            {"model": model, "prompt": "Hi", "max_tokens": 2},
            KEYED,
        ),
        ("POST", "/v1/load_lora_adapter"): (
            "/v1/load_lora_adapter",
            {"lora_name": "matrix", "lora_path": "/nonexistent/adapter"},  # 400 for the admin
            ADMIN_ONLY,
        ),
        ("POST", "/v1/unload_lora_adapter"): (
            "/v1/unload_lora_adapter",
            {"lora_name": "not-loaded"},  # 404 for the admin
            ADMIN_ONLY,
        ),
        ("POST", "/v1/feedback"): (
            "/v1/feedback",
            {"type": "thumbs", "generation": unknown_ref, "value": "up"},  # 404: no such answer
            KEYED,
        ),
        ("GET", "/v1/feedback"): ("/v1/feedback", None, KEYED),
        ("GET", "/v1/feedback/{vote_id}"): ("/v1/feedback/999999999", None, KEYED),
        ("DELETE", "/v1/feedback/{vote_id}"): ("/v1/feedback/999999999", None, KEYED),
        ("GET", "/v1/leaderboard"): ("/v1/leaderboard?rounds=0", None, KEYED),
        ("POST", "/v1/jobs"): ("/v1/jobs", {"stage": "nonsense", "name": "x"}, ADMIN_ONLY),
        ("GET", "/v1/jobs"): ("/v1/jobs", None, ADMIN_ONLY),
        ("GET", "/v1/jobs/{job_id}"): (f"/v1/jobs/{MISSING_JOB}", None, ADMIN_ONLY),
        ("POST", "/v1/jobs/{job_id}/cancel"): (f"/v1/jobs/{MISSING_JOB}/cancel", None, ADMIN_ONLY),
        ("GET", "/v1/adapters"): ("/v1/adapters", None, ADMIN_ONLY),
        ("POST", "/v1/adapters/rollback"): ("/v1/adapters/rollback", None, ADMIN_ONLY),  # 409: none promoted
        ("POST", "/v1/adapters/{ref}/promote"): ("/v1/adapters/no-such-adapter/promote", None, ADMIN_ONLY),
        ("POST", "/v1/adapters/{ref}/load"): ("/v1/adapters/no-such-adapter/load", None, ADMIN_ONLY),
        ("POST", "/v1/adapters/{ref}/unload"): ("/v1/adapters/no-such-adapter/unload", None, ADMIN_ONLY),
        ("GET", "/v1/feedback/{vote_id}/lineage"): ("/v1/feedback/999999999/lineage", None, KEYED),
        ("POST", "/v1/adapters/auto-promote"): ("/v1/adapters/auto-promote", None, ADMIN_ONLY),
        ("GET", "/v1/adapters/{ref}/replay"): ("/v1/adapters/no-such-adapter/replay", None, ADMIN_ONLY),
        ("POST", "/v1/adapters/{ref}/replay"): ("/v1/adapters/no-such-adapter/replay", None, ADMIN_ONLY),
        ("GET", "/v1/adapters/{ref}/promotion"): ("/v1/adapters/no-such-adapter/promotion", None, ADMIN_ONLY),
        # unknown API paths: an enveloped 404 to anyone (it names only the path that was asked for)
        ("GET", "/v1/{path:path}"): ("/v1/no-such-route", None, {r: 404 for r in ROLES}),
    }


def _flat(routes: list) -> list:
    """FastAPI 0.165 keeps an included router as one route object; its routes are inside (no prefixes here)."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += _flat(inner.routes) if inner is not None else [route]
    return found


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path) of every HTTP route the app serves, read from a freshly built app."""
    from feedback.store import Store
    from hub.app import build_app
    from hub.settings import Settings

    settings = Settings(data_dir=tmp_path, api_key="k", admin_password="a")
    with Store(tmp_path / "feedback.db") as store:
        app = build_app(settings, NoEngine("matrix-model"), store=store, with_ui=False, run_jobs=False)
        routes = set()
        for route in _flat(app.routes):
            assert not isinstance(route, Mount), f"a mount besides the UI: {route.path}"
            methods = sorted(route.methods - {"HEAD"}) if route.methods else []
            if route.path == "/v1/{path:path}":
                methods = ["GET"]  # the catch-all takes every method; one row stands for it
            routes |= {(method, route.path) for method in methods}
    return routes


def test_every_route_has_a_row(tmp_path):
    routes = app_routes(tmp_path)
    rows = set(matrix("m"))
    assert routes - rows == set(), "routes without a row in the access matrix"
    assert rows - routes == set(), "rows for routes the app no longer has"


@pytest.fixture(scope="module")
def rater_key(secured_hub) -> str:
    """A rater's own API key, made in the server's store (WAL: the running server sees it at once)."""
    from feedback.store import Store

    with Store(secured_hub.data_dir / "feedback.db") as store:
        name = store.add_rater(f"matrix-{uuid.uuid4().hex[:6]}").name
        return store.create_api_key(name)[1]


def headers_for(role: str, rater_key: str) -> dict[str, str]:
    token = {"anonymous": None, "rater": rater_key, "api": API_KEY, "admin": ADMIN_PASSWORD}[role]
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def seen_bodies() -> list[str]:
    """Every response body of this module, checked for secrets at the end."""
    return []


@pytest.mark.parametrize("role", ROLES)
def test_access_matrix(secured_hub, rater_key, role, seen_bodies):
    model = httpx.get(f"{secured_hub.url}/v1/models", headers=headers_for("api", rater_key)).json()["data"][
        0
    ]["id"]
    failures = []
    for (method, route), (path, body, expected) in matrix(model).items():
        response = httpx.request(
            method,
            f"{secured_hub.url}{path}",
            json=body,
            headers=headers_for(role, rater_key),
            timeout=60,
        )
        seen_bodies.append(response.text)
        want = expected[role]
        got = response.status_code
        ok = got not in (401, 403) and got < 500 if want == "ok" else got == want
        if not ok:
            failures.append(f"{role} {method} {route}: {got} (wanted {want}) {response.text[:200]}")
        if got >= 400:
            validate(response.json(), "ErrorResponse")
        if got == 401:
            assert response.headers["www-authenticate"] == "Bearer"
    assert not failures, "\n".join(failures)


def test_a_rater_cannot_read_others_votes_or_start_jobs(secured_hub, rater_key, seen_bodies):
    url = secured_hub.url
    rater = headers_for("rater", rater_key)
    shared = headers_for("api", rater_key)
    model = httpx.get(f"{url}/v1/models", headers=shared).json()["data"][0]["id"]
    answer = httpx.post(f"{url}/v1/chat/completions", json=chat(model), headers=shared, timeout=60).json()
    ref = {"generation_id": answer["id"], "choice": 0}
    theirs = httpx.post(
        f"{url}/v1/feedback", json={"type": "thumbs", "generation": ref, "value": "up"}, headers=shared
    ).json()
    responses = [
        httpx.get(f"{url}/v1/feedback/{theirs['id']}", headers=rater),  # as good as missing
        httpx.get(f"{url}/v1/feedback", params={"rater": "api"}, headers=rater),
        httpx.post(
            f"{url}/v1/jobs", json={"stage": "sft", "name": "sneaky", "data": "feedback"}, headers=rater
        ),
    ]
    seen_bodies.extend(r.text for r in responses)
    assert [r.status_code for r in responses] == [404, 403, 403]
    own = httpx.get(f"{url}/v1/feedback", headers=rater).json()["data"]
    assert theirs["id"] not in [v["id"] for v in own]
    listed = httpx.get(f"{url}/v1/jobs", headers=headers_for("admin", rater_key)).json()["data"]
    assert "sneaky" not in [job["name"] for job in listed]


def test_the_ui_needs_a_login(secured_hub):
    url = secured_hub.url
    # the page is a shell that shows the login form; what it would load needs the login
    for path in ("/config", "/gradio_api/info"):
        response = httpx.get(f"{url}{path}")
        assert response.status_code in (401, 403), (path, response.status_code, response.text[:200])
    upload = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.txt", b"x")})
    assert upload.status_code in (401, 403), upload.text[:200]
    bad_login = httpx.post(f"{url}/login", data={"username": "admin", "password": "wrong"})
    assert bad_login.status_code in (400, 401), bad_login.text[:200]


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/config"])
def test_cors_is_closed_to_foreign_origins(secured_hub, path):
    origin = "https://evil.example"
    preflight = httpx.options(
        f"{secured_hub.url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    # without Access-Control-Allow-Origin the browser refuses the preflight, whatever else it says
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    simple = httpx.get(
        f"{secured_hub.url}{path}", headers={"Origin": origin, "Authorization": f"Bearer {API_KEY}"}
    )
    # (Gradio's CORS middleware sends Allow-Credentials alone; without Allow-Origin it opens nothing)
    assert "access-control-allow-origin" not in simple.headers, simple.headers


def test_secrets_never_leave_the_server(secured_hub, rater_key, seen_bodies):
    """Runs after the matrix in this module: every body it saw, /metrics, the log and the database."""
    secrets = (API_KEY, ADMIN_PASSWORD, rater_key)
    # a login attempt and wrong keys that contain parts of the secrets
    httpx.post(f"{secured_hub.url}/login", data={"username": "admin", "password": ADMIN_PASSWORD + "x"})
    for token in (ADMIN_PASSWORD + "x", API_KEY + "x", rater_key + "x"):
        seen_bodies.append(
            httpx.get(f"{secured_hub.url}/v1/models", headers={"Authorization": f"Bearer {token}"}).text
        )
    metrics = httpx.get(f"{secured_hub.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert metrics.status_code == 200
    log = secured_hub.log_path.read_text(errors="replace")
    assert "serving" in log  # the log is really there
    database = b"".join(p.read_bytes() for p in secured_hub.data_dir.glob("feedback.db*") if p.is_file())
    for secret in secrets:
        assert secret not in metrics.text
        assert secret not in log
        assert secret.encode() not in database, "a secret stored in clear"
        leaks = [body[:200] for body in seen_bodies if secret in body]
        assert not leaks, leaks
