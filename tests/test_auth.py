"""Authentication of a real `tunehub serve` started with an API key and an admin password: the key guards
/v1 and /metrics, only the admin password may load or unload adapters, /health stays open, and the key
never shows up in /metrics or the server log.

Run: .venv/bin/python -m pytest tests/test_auth.py -q
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.openai_schema import validate

API_KEY = "test-key"  # what the `secured_hub` fixture starts the server with
ADMIN_PASSWORD = "test-admin"
WRONG_KEY = "not-the-key"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expect_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    return body["error"]


def test_no_key_is_refused(secured_hub):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics")):
        response = httpx.request(method, f"{secured_hub.url}{path}", json={} if method == "POST" else None)
        error = expect_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert error["type"] == "authentication_error"
        assert "API key" in error["message"] and "Bearer" in error["message"]


@pytest.mark.parametrize(
    "header",
    [
        bearer(WRONG_KEY),
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
        bearer(API_KEY + "x"),
    ],
    ids=["wrong key", "no scheme", "basic scheme", "key with a suffix"],
)
def test_wrong_key_is_refused(secured_hub, header):
    response = httpx.get(f"{secured_hub.url}/v1/models", headers=header)
    error = expect_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in error["message"]


def test_openai_client_with_wrong_key(secured_hub):
    client = openai.OpenAI(base_url=secured_hub.url + "/v1", api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert raised.value.status_code == 401


def test_right_key_through_the_openai_client(secured_hub, demo_model):
    client = openai.OpenAI(base_url=secured_hub.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    assert demo_model.name in [m.id for m in client.models.list().data]
    completion = client.chat.completions.create(
        model=demo_model.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    # the admin password is a key too (an admin may do what a user may)
    admin = openai.OpenAI(base_url=secured_hub.url + "/v1", api_key=ADMIN_PASSWORD, max_retries=0)
    assert demo_model.name in [m.id for m in admin.models.list().data]


def test_health_needs_no_key(secured_hub):
    response = httpx.get(f"{secured_hub.url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_adapters_need_the_admin_password(secured_hub, adapters_dir):
    load_body = {"lora_name": "guarded", "lora_path": str(adapters_dir / "a")}
    models = f"{secured_hub.url}/v1/models"

    def ids() -> list[str]:
        return [c["id"] for c in httpx.get(models, headers=bearer(API_KEY)).json()["data"]]

    before = ids()
    for token in (API_KEY, None, WRONG_KEY):
        headers = bearer(token) if token else {}
        response = httpx.post(f"{secured_hub.url}/v1/load_lora_adapter", json=load_body, headers=headers)
        error = expect_error(response, 403 if token == API_KEY else 401)
        if token == API_KEY:
            assert error["type"] == "permission_error" and "admin password" in error["message"]
    assert ids() == before

    response = httpx.post(
        f"{secured_hub.url}/v1/load_lora_adapter", json=load_body, headers=bearer(ADMIN_PASSWORD), timeout=120
    )
    assert response.status_code == 200, response.text
    assert "guarded" in ids()

    unload = f"{secured_hub.url}/v1/unload_lora_adapter"
    error = expect_error(httpx.post(unload, json={"lora_name": "guarded"}, headers=bearer(API_KEY)), 403)
    assert "admin password" in error["message"]
    assert "guarded" in ids()
    response = httpx.post(unload, json={"lora_name": "guarded"}, headers=bearer(ADMIN_PASSWORD), timeout=60)
    assert response.status_code == 200, response.text
    assert ids() == before


def test_secrets_stay_out_of_metrics_and_log(secured_hub):
    httpx.get(f"{secured_hub.url}/v1/models", headers=bearer(WRONG_KEY))  # a failed attempt is not logged
    metrics = httpx.get(f"{secured_hub.url}/metrics", headers=bearer(API_KEY))
    assert metrics.status_code == 200
    assert "tunehub_requests_total" in metrics.text
    log = secured_hub.log_tail(400)
    assert "serving" in log  # the log is really there
    for secret in (API_KEY, ADMIN_PASSWORD, WRONG_KEY):
        assert secret not in metrics.text
        assert secret not in log
