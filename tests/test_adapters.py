"""Registered adapters: promote and rollback in the store, lineage down to the votes, `tunehub adapters`, and
a hub that re-loads its registered candidate and promoted adapters when it starts (issue 4, item 5).

Run: .venv/bin/python -m pytest tests/test_adapters.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from feedback.errors import Conflict
from feedback.store import Store
from hub.adapters_service import AdapterService, split_ref
from tests.support.cli import tunehub
from tests.support.server import InProcessHub

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def register(store: Store, name: str, path: str = "/nowhere", **kwargs):
    return store.add_adapter(name, base="demo", method="lora", path=path, metrics={"stage": "sft"}, **kwargs)


def statuses(store: Store) -> dict[str, str]:
    return {a.ref: a.status for a in store.list_adapters()}


def test_promote_retires_the_one_before_and_rollback_walks_back(store):
    for _ in range(3):
        register(store, "km")
    with pytest.raises(Conflict, match="no adapter is promoted"):
        store.rollback_adapter()
    store.promote_adapter("km", 1)
    with pytest.raises(Conflict, match="first promoted version"):
        store.rollback_adapter()
    store.promote_adapter("km", 2)
    store.promote_adapter("km", 3)
    assert statuses(store) == {"km@1": "retired", "km@2": "retired", "km@3": "promoted"}
    assert store.promoted_adapter().ref == "km@3"

    assert store.rollback_adapter().ref == "km@2"
    assert statuses(store) == {"km@1": "retired", "km@2": "promoted", "km@3": "retired"}
    assert store.rollback_adapter().ref == "km@1"  # a second rollback goes one step further back
    assert statuses(store) == {"km@1": "promoted", "km@2": "retired", "km@3": "retired"}
    with pytest.raises(Conflict):
        store.rollback_adapter()
    assert store.promote_adapter("km", 1).status == "promoted"  # promoting the promoted one: no change
    assert statuses(store)["km@1"] == "promoted"


def test_promotion_is_per_base_model(store):
    register(store, "a")
    store.add_adapter("b", base="other", method="lora", path="/x")
    store.promote_adapter("a", 1)
    store.promote_adapter("b", 1)
    assert statuses(store) == {"a@1": "promoted", "b@1": "promoted"}


def test_lineage_goes_down_to_the_votes_and_up_the_parents(store):
    g = store.add_generation(prompt=PROMPT, model="base", text="Paris.")
    vote = store.add_thumbs(g.id, "up", rater="alice")
    dataset = store.add_dataset(kind="sft", format="trl", content_hash="h", n_rows=1, vote_ids=[vote.id])
    job = store.create_job("sft", "lora", params={"name": "km", "data": "feedback"}, dataset_id=dataset.id)
    register(store, "km")
    register(store, "km", parent="km@1", job_id=job.id, dataset_id=dataset.id)
    register(store, "km", parent="km@2")

    adapters = AdapterService(store)
    second = adapters.lineage("km@v2")
    assert second["job"]["id"] == job.id and second["dataset"]["id"] == dataset.id
    assert (second["votes"], second["vote_ids"]) == (1, [vote.id])
    assert adapters.lineage("km")["parents"] == ["km@2", "km@1"]
    assert [r.ref for r in adapters.rows()] == ["km@3", "km@2", "km@1"]
    assert split_ref("km@v2") == ("km", 2) and split_ref("a@b") == ("a@b", None)


def test_tunehub_adapters_list_show_promote_rollback(tmp_path):
    with Store(tmp_path / "feedback.db") as store:
        register(store, "km")
        register(store, "km", parent="km@1")
    data_dir = ("--data-dir", str(tmp_path))

    code, out, _ = tunehub("adapters", "list", *data_dir)
    assert code == 0 and "km@1" in out and "km@2" in out and "candidate" in out
    code, out, _ = tunehub("adapters", "show", "km@2", *data_dir)
    assert code == 0 and json.loads(out)["parents"] == ["km@1"]
    assert tunehub("adapters", "promote", "km@1", *data_dir)[:2] == (0, "km@1 promoted\n")
    assert tunehub("adapters", "promote", "km", *data_dir)[:2] == (0, "km@2 promoted\n")
    code, out, _ = tunehub("adapters", "list", "--status", "retired", *data_dir)
    assert "km@1" in out and "km@2" not in out
    assert tunehub("adapters", "rollback", *data_dir)[:2] == (0, "rolled back: km@1 promoted again\n")
    code, _, err = tunehub("adapters", "rollback", *data_dir)
    assert code == 1 and "first promoted version" in err
    code, _, err = tunehub("adapters", "show", "nope", *data_dir)
    assert code == 1 and "'nope' not found" in err


def test_the_hub_reloads_registered_adapters_when_it_starts(tmp_path, demo_model):
    from tests.support.adapters import make_lora_adapter

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    paths = {n: make_lora_adapter(demo_model, tmp_path / n, rank=4, seed=i) for i, n in enumerate("abcd")}
    with Store(data_dir / "feedback.db") as store:

        def add(name: str, path: Path, **kwargs):
            return store.add_adapter(
                name, base=str(demo_model), method="lora", path=str(path), metrics={"stage": "sft"}, **kwargs
            )

        add("cand", paths["a"])
        add("cand", paths["b"])  # a second version: served as cand@v2
        add("prom", paths["c"])
        store.promote_adapter("prom", 1)
        add("old", paths["d"], status="retired")
        add("gone", tmp_path / "missing")
        store.add_adapter(
            "judge", base=str(demo_model), method="lora", path=str(paths["a"]), metrics={"stage": "reward"}
        )
    with InProcessHub(model=demo_model, data_dir=data_dir) as hub:
        models = {m["id"] for m in httpx.get(f"{hub.url}/v1/models", timeout=30).json()["data"]}
        assert {"cand", "cand@v2", "prom"} <= models
        assert not {"old", "gone", "judge"} & models  # retired, missing on disk, not a chat adapter
        assert "gone" in hub.log_tail(80)  # the missing one is named in the log
        answer = httpx.post(
            f"{hub.url}/v1/chat/completions",
            json={"model": "prom", "messages": PROMPT, "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
