"""/v1/adapters against a real hub with an admin password (issue 4, item 5): list, promote, rollback, load
and unload through AdapterService, admin only; `tunehub adapters load|unload` over HTTP.

Run: .venv/bin/python -m pytest tests/test_adapters_api.py -q
"""

from __future__ import annotations

import httpx
import pytest

from feedback.store import Store
from tests.support.adapters import make_lora_adapter
from tests.support.cli import tunehub
from tests.support.server import InProcessHub

PASSWORD = "adapters-admin-pw"
ADMIN = {"Authorization": f"Bearer {PASSWORD}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, demo_model):
    """A hub with two versions of `km` registered before it starts (so both are re-loaded as candidates)."""
    root = tmp_path_factory.mktemp("adapters-api")
    data_dir = root / "data"
    with Store(data_dir / "feedback.db") as store:
        for version in (1, 2):
            path = make_lora_adapter(demo_model, root / f"km{version}", rank=4, seed=version)
            store.add_adapter(
                "km", base=str(demo_model), method="lora", path=str(path), metrics={"stage": "sft"}
            )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        with InProcessHub(model=demo_model, data_dir=data_dir, admin_password=PASSWORD) as process:
            yield process


def post(hub, path: str, status: int = 200, headers: dict | None = None) -> dict:
    response = httpx.post(f"{hub.url}{path}", headers=ADMIN if headers is None else headers, timeout=60)
    assert response.status_code == status, response.text
    return response.json() if status == 200 else response.json()["error"]


def models(hub) -> set[str]:
    return {m["id"] for m in httpx.get(f"{hub.url}/v1/models", headers=ADMIN, timeout=30).json()["data"]}


def test_list_promote_and_rollback_are_admin_only(hub):
    listed = httpx.get(f"{hub.url}/v1/adapters", headers=ADMIN, timeout=30).json()["data"]
    assert [(a["id"], a["status"], a["served_as"]) for a in listed] == [
        ("km@2", "candidate", "km@v2"),
        ("km@1", "candidate", "km"),
    ]
    for path in ("/v1/adapters/km/promote", "/v1/adapters/rollback", "/v1/adapters/km/load"):
        assert post(hub, path, 403, headers={})["code"] == "forbidden"  # no admin password
    assert httpx.get(f"{hub.url}/v1/adapters", timeout=30).status_code == 403

    assert post(hub, "/v1/adapters/km@1/promote")["status"] == "promoted"
    promoted = post(hub, "/v1/adapters/km@v2/promote")
    assert (promoted["id"], promoted["status"], promoted["served_as"]) == ("km@2", "promoted", "km@v2")
    statuses = {
        a["id"]: a["status"] for a in httpx.get(f"{hub.url}/v1/adapters", headers=ADMIN).json()["data"]
    }
    assert statuses == {"km@2": "promoted", "km@1": "retired"}
    back = post(hub, "/v1/adapters/rollback")
    assert (back["id"], back["status"]) == ("km@1", "promoted")
    assert post(hub, "/v1/adapters/nobody/promote", 404)["message"]


def test_tunehub_adapters_unload_and_load_against_the_running_hub(hub, monkeypatch):
    monkeypatch.setenv("TUNEHUB_ADMIN_PASSWORD", PASSWORD)
    assert "km@v2" in models(hub)
    code, out, _ = tunehub("adapters", "unload", "km@2", "--url", hub.url)
    assert code == 0 and out.strip() == "km@2 unloaded (it was served as km@v2)"
    assert "km@v2" not in models(hub)
    code, _, err = tunehub("adapters", "unload", "km@2", "--url", hub.url)
    assert code == 1 and "409" in err and "not loaded" in err
    code, out, _ = tunehub("adapters", "load", "km@2", "--url", hub.url)
    assert code == 0 and out.strip() == "km@2 is served as km@v2"
    assert "km@v2" in models(hub)
    code, _, err = tunehub("adapters", "load", "km@2", "--url", hub.url, "--admin-password", "wrong")
    assert code == 1 and "403" in err and "TUNEHUB_ADMIN_PASSWORD" in err
    monkeypatch.delenv("TUNEHUB_ADMIN_PASSWORD")
    code, _, err = tunehub("adapters", "load", "km@2", "--url", "http://127.0.0.1:9", "--timeout", "5")
    assert code == 1 and "no hub answered" in err
