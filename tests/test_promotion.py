"""Promotion (issue 6, items 1-3): the rule on hand-made votes, the replay guard on the demo model, lineage
from a vote back to the adapters it trained, and `tunehub-default` through a real hub with the openai client.

Run: .venv/bin/python -m pytest tests/test_promotion.py -q
"""

from __future__ import annotations

import httpx
import pytest

from feedback.errors import Conflict, Invalid
from feedback.leaderboard import fit_leaderboard
from feedback.promotion_rule import PromotionRule, decide, guard_reasons
from feedback.store import Store
from tests.support.adapters import make_lora_adapter
from tests.support.cli import tunehub
from tests.support.server import InProcessHub

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def votes(
    candidate: str, incumbent: str, wins: int, losses: int, ties: int = 0
) -> list[tuple[str, str, str]]:
    """Hand-made pairwise votes, the candidate on either side."""
    rows = [(candidate, incumbent, "a")] * (wins // 2) + [(incumbent, candidate, "b")] * (wins - wins // 2)
    rows += [(candidate, incumbent, "b")] * losses + [(candidate, incumbent, "tie")] * ties
    return rows


def judge(rule: PromotionRule, rows, replay=None):
    board = fit_leaderboard(rows, anchor="base", rounds=200)
    return decide(rule, board, rows, candidate="km", incumbent="base", replay=replay)


# ----- the rule on hand-made votes -------------------------------------------------------------------------


def test_win_rate_rule_promotes_waits_and_counts_ties_half():
    rule = PromotionRule(kind="win_rate", win_rate=0.6, min_votes=20)
    promote = judge(rule, votes("km", "base", 15, 5))
    assert promote.verdict == "promote" and "won 75% of 20 votes" in promote.reasons[0]
    short = judge(rule, votes("km", "base", 10, 0))
    assert (
        short.verdict == "not_yet"
        and "10 decided votes" in short.reasons[0]
        and "needs 20" in short.reasons[0]
    )
    close = judge(rule, votes("km", "base", 10, 8, ties=2))  # 11 of 20 = 55%
    assert close.verdict == "not_yet" and "won 55% of 20 votes" in close.reasons[0]
    # both_bad says nothing about which is better: it is not counted
    assert (
        judge(rule, votes("km", "base", 15, 5) + [("km", "base", "both_bad")] * 30).reasons == promote.reasons
    )


def test_bradley_terry_rule_needs_the_intervals_apart():
    rule = PromotionRule(kind="bt_lower_above_upper", min_votes=20)
    clear = judge(rule, votes("km", "base", 80, 20))
    assert clear.verdict == "promote", clear.reasons
    assert "lower 95% bound" in clear.reasons[0] and "is above base's upper bound" in clear.reasons[0]
    overlapping = judge(rule, votes("km", "base", 13, 10))
    assert overlapping.verdict == "not_yet" and "is not above" in overlapping.reasons[0]


def test_the_guard_refuses_whatever_the_votes_say():
    rule = PromotionRule(kind="win_rate", min_votes=10, max_accuracy_drop=0.05, max_kl=1.0)
    replay = {
        "candidate": {"name": "km@2", "accuracy": 0.12, "kl": 3.5},
        "incumbent": {"name": "base", "accuracy": 0.85, "kl": 0.0},
    }
    refused = judge(rule, votes("km", "base", 90, 10), replay=replay)
    assert refused.verdict == "refuse"
    assert "checkable accuracy fell from 85% (base) to 12% (km@2): a drop of 73 points" in refused.reasons[0]
    assert "KL divergence from the base is 3.5" in refused.reasons[1]
    # within the margin (4 points) and under the KL bound: the votes decide
    kept = {"candidate": {"name": "km@2", "accuracy": 0.81, "kl": 0.2}, "incumbent": replay["incumbent"]}
    assert guard_reasons(rule, kept["candidate"], kept["incumbent"]) == []
    assert judge(rule, votes("km", "base", 90, 10), replay=kept).verdict == "promote"


def test_rule_settings_are_checked_and_read_from_the_environment():
    with pytest.raises(Invalid, match="'elo'"):
        PromotionRule(kind="elo")
    with pytest.raises(Invalid, match="0.3"):
        PromotionRule(win_rate=0.3)
    from hub.settings import Settings  # the hub reads the variables once and gives the rule its values

    given = Settings.from_sources(
        env={
            "TUNEHUB_PROMOTION_RULE": "win_rate",
            "TUNEHUB_PROMOTION_MIN_VOTES": "50",
            "TUNEHUB_AUTO_PROMOTE": "1",
        }
    )
    rule = PromotionRule(**given.promotion_rule_values())
    assert (rule.kind, rule.min_votes, rule.auto, rule.max_accuracy_drop) == ("win_rate", 50, True, 0.05)
    assert (
        PromotionRule(**Settings.from_sources(env={}).promotion_rule_values()).auto is False
    )  # off by default


# ----- lineage both ways -----------------------------------------------------------------------------------


def test_a_vote_names_the_adapters_it_trained(tmp_path):
    with Store(tmp_path / "feedback.db") as store:
        a = store.add_generation(prompt=PROMPT, model="base", text="Paris.")
        b = store.add_generation(prompt=PROMPT, model="base", text="Lyon.")
        c = store.add_generation(prompt=PROMPT, model="base", text="Paris, of course.")
        used = store.add_pairwise(a.id, b.id, "a", rater="ann")
        unused = store.add_pairwise(a.id, c.id, "tie", rater="bob")
        first = store.add_dataset(kind="pairs", format="trl", content_hash="h1", n_rows=1, vote_ids=[used.id])
        job = store.create_job("dpo", "lora", dataset_id=first.id)
        via_job = store.add_adapter("km", base="m", method="lora", path="/a/1", job_id=job.id)
        direct = store.add_adapter(
            "km", base="m", method="lora", path="/a/2", dataset_id=first.id, parent="km@1"
        )
        store.add_adapter("other", base="m", method="lora", path="/a/3")  # trained on nothing recorded
        assert [x.ref for x in store.vote_adapters(used.id)] == [via_job.ref, direct.ref] == ["km@1", "km@2"]
        assert store.vote_adapters(unused.id) == []
        assert used.id in store.adapter_vote_ids("km", 2)  # and the other way
        with pytest.raises(Exception, match="vote 999 not found"):
            store.vote_adapters(999)


# ----- the replay guard on the demo model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, full_demo_model):
    """A store with a harmless (zero) and a broken (random, strong) candidate, and the services over it."""
    from hub.adapters_service import AdapterService
    from hub.feedback_service import FeedbackService
    from hub.promotion_service import PromotionService

    root = tmp_path_factory.mktemp("guard")
    store = Store(root / "feedback.db")
    for name, scale in (("harmless", 0.0), ("broken", 30.0)):
        targets = ("q_proj", "k_proj", "v_proj", "o_proj")
        path = make_lora_adapter(full_demo_model, root / name, rank=8, seed=1, scale=scale, targets=targets)
        store.add_adapter(
            name, base=str(full_demo_model), method="lora", path=str(path), metrics={"stage": "dpo"}
        )
    adapters = AdapterService(store)
    promotion = PromotionService(store, adapters, FeedbackService(store, anchor=lambda: "base"), root)
    yield adapters, promotion
    store.close()


def test_a_broken_candidate_is_refused_naming_the_accuracy_drop(guarded):
    adapters, promotion = guarded
    with pytest.raises(Conflict) as refused:
        promotion.promote("broken")
    message = refused.value.message
    assert "broken@1 is not promoted: checkable accuracy fell from" in message and "points" in message
    assert "KL divergence from the base" in message and "override" in message
    report = promotion.report("broken")  # stored for the Adapters tab and GET /v1/adapters/broken/replay
    assert report["candidate"]["accuracy"] < report["incumbent"]["accuracy"] - 0.05
    assert report["against"] == "base" and len(report["rows"]) == 50
    # issue 16: the prompts it broke, with both answers and their lengths; no promoted model to compare with
    flips = report["flips"]
    assert flips["against_promoted"] is None and flips["against_base"]["against"] == "base"
    broke = flips["against_base"]["pass_to_fail"]
    assert len(broke) >= 5 and flips["against_base"]["net"] < 0
    first = broke[0]
    assert first["prompt"] and first["expected"] and first["other"] and first["candidate"] != first["other"]
    assert first["candidate_length"] == len(first["candidate"])
    assert flips["against_base"]["mean_length"]["other"] > 0
    assert promotion.decision("broken").verdict == "refuse"
    assert adapters.get("broken").status == "candidate"
    assert promotion.promote("broken", override=True).status == "promoted"  # an admin's override
    adapters.store.set_adapter_status("broken", 1, "retired")


def test_a_harmless_candidate_passes_with_zero_kl(guarded):
    adapters, promotion = guarded
    report = promotion.replay("harmless")
    assert report["candidate"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert report["candidate"]["accuracy"] == report["incumbent"]["accuracy"] > 0.5
    assert [r["candidate"] for r in report["rows"]] == [r["incumbent"] for r in report["rows"]]
    assert promotion.decision("harmless").verdict == "not_yet"  # the guard passes; no votes yet
    assert promotion.promote("harmless").status == "promoted"
    against_base = report["flips"]["against_base"]
    assert against_base["pass_to_fail"] == against_base["fail_to_pass"] == []
    assert against_base["length_ratio"] == pytest.approx(1.0)


def test_the_flip_report_compares_with_the_promoted_model_and_the_base(guarded):
    """Issue 16: against a promoted adapter, the replay keeps the base's answers too, and flips against both."""
    adapters, promotion = guarded
    adapters.promote("harmless")
    report = promotion.replay("broken")
    assert report["against"] == "harmless@1"
    flips = report["flips"]
    promoted, base = flips["against_promoted"], flips["against_base"]
    assert promoted["against"] == "harmless@1" and base["against"] == "base"
    assert all("base" in row and row["base_correct"] is not None for row in report["rows"])
    # harmless is a zero adapter: it answers as the base, so both comparisons see the same flips
    assert promoted["pass_to_fail"] == base["pass_to_fail"] and len(base["pass_to_fail"]) >= 5
    assert promotion.report("broken")["flips"] == flips  # stored as replayed


# ----- tunehub-default through the real server ----------------------------------------------------------


PASSWORD = "promotion-admin-pw"
ADMIN = {"Authorization": f"Bearer {PASSWORD}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("promotion-hub")
    data_dir = root / "data"
    with Store(data_dir / "feedback.db") as store:
        for version in (1, 2):
            path = make_lora_adapter(demo_model, root / f"km{version}", rank=4, seed=version, scale=3.0)
            store.add_adapter(
                "km", base=str(demo_model), method="lora", path=str(path), metrics={"stage": "sft"}
            )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        # automatic promotion on, with a rule small votes can satisfy; the periodic check is left to
        # POST /v1/adapters/auto-promote here (an hour apart, so it never runs during the tests)
        patch.setenv("TUNEHUB_AUTO_PROMOTE", "1")
        patch.setenv("TUNEHUB_AUTO_PROMOTE_INTERVAL", "3600")
        patch.setenv("TUNEHUB_PROMOTION_RULE", "win_rate")
        patch.setenv("TUNEHUB_PROMOTION_MIN_VOTES", "10")
        with InProcessHub(model=demo_model, data_dir=data_dir, admin_password=PASSWORD) as process:
            yield process


def test_tunehub_default_follows_promotion_and_rollback(hub):
    import openai

    client = openai.OpenAI(base_url=f"{hub.url}/v1", api_key=PASSWORD, max_retries=0)
    base = next(m.id for m in client.models.list().data if m.id not in ("tunehub-default", "km", "km@v2"))
    assert "tunehub-default" in {m.id for m in client.models.list().data}

    def answer(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=PROMPT, temperature=0, max_tokens=12, seed=0
        )
        return reply.choices[0].message.content

    def promote(ref: str, status: int = 200, override: bool = True) -> dict:
        query = "?override=true" if override else ""
        response = httpx.post(f"{hub.url}/v1/adapters/{ref}/promote{query}", headers=ADMIN, timeout=120)
        assert response.status_code == status, response.text
        return response.json()

    answers = {model: answer(model) for model in (base, "km", "km@v2")}
    assert len(set(answers.values())) == 3, answers  # the three tell apart
    assert answer("tunehub-default") == answers[base]  # nothing promoted: the base

    promote("km@1")
    assert answer("tunehub-default") == answers["km"]
    card = client.models.retrieve("tunehub-default")
    assert card.model_extra.get("parent") == base
    promote("km@2")
    assert answer("tunehub-default") == answers["km@v2"]
    back = httpx.post(f"{hub.url}/v1/adapters/rollback", headers=ADMIN, timeout=60)
    assert back.json()["id"] == "km@1"
    assert answer("tunehub-default") == answers["km"]


def test_replay_and_decision_routes(hub):
    missing = httpx.get(f"{hub.url}/v1/adapters/km@2/replay", headers=ADMIN, timeout=30)
    if missing.status_code == 404:
        assert "POST /v1/adapters/km@2/replay" in missing.json()["error"]["message"]
    made = httpx.post(f"{hub.url}/v1/adapters/km@2/replay", headers=ADMIN, timeout=300).json()
    assert made["object"] == "replay" and made["adapter"] == "km@2" and len(made["rows"]) == 50
    assert made["candidate"]["kl"] > 0
    stored = httpx.get(f"{hub.url}/v1/adapters/km@2/replay", headers=ADMIN, timeout=30).json()
    assert stored["candidate"] == made["candidate"]
    # issue 16: the per-prompt flip report, against the promoted model (when there is one) and the base
    flips = stored["flips"]
    assert flips == made["flips"] and flips["against_base"]["against"] == "base"
    assert flips["against_base"]["mean_length"]["candidate"] > 0
    if made["against"] != "base":
        assert flips["against_promoted"]["against"] == made["against"]
    decision = httpx.get(f"{hub.url}/v1/adapters/km@2/promotion", headers=ADMIN, timeout=300).json()
    assert decision["verdict"] in ("not_yet", "refuse") and decision["reasons"]
    assert httpx.get(f"{hub.url}/v1/adapters/km@2/replay", timeout=30).status_code == 403


def test_vote_lineage_route_names_the_adapters_it_trained(hub, tmp_path):
    reply = httpx.post(
        f"{hub.url}/v1/chat/completions",
        headers=ADMIN,
        json={"model": "km", "messages": PROMPT, "n": 2, "max_tokens": 4, "seed": 1},
        timeout=60,
    ).json()
    vote = httpx.post(
        f"{hub.url}/v1/feedback",
        headers=ADMIN,
        json={
            "type": "pairwise",
            "a": {"generation_id": reply["id"], "choice": 0},
            "b": {"generation_id": reply["id"], "choice": 1},
            "winner": "a",
        },
        timeout=30,
    ).json()
    before = httpx.get(f"{hub.url}/v1/feedback/{vote['id']}/lineage", headers=ADMIN, timeout=30).json()
    assert before["object"] == "vote_lineage" and before["vote"]["id"] == vote["id"]
    assert before["trained_adapters"] == []
    with Store(hub.data_dir / "feedback.db") as store:
        dataset = store.add_dataset(
            kind="pairs", format="trl", content_hash="x", n_rows=1, vote_ids=[vote["id"]]
        )
        job = store.create_job("dpo", "lora", dataset_id=dataset.id)
        store.add_adapter("fromvote", base="m", method="lora", path=str(tmp_path), job_id=job.id)
    after = httpx.get(f"{hub.url}/v1/feedback/{vote['id']}/lineage", headers=ADMIN, timeout=30).json()
    assert [(a["id"], a["job_id"]) for a in after["trained_adapters"]] == [("fromvote@1", job.id)]
    assert httpx.get(f"{hub.url}/v1/feedback/999999/lineage", headers=ADMIN, timeout=30).status_code == 404


def test_automatic_promotion_after_enough_wins(hub, demo_model, tmp_path):
    path = make_lora_adapter(demo_model, tmp_path / "auto", rank=4, seed=7, scale=0.0)  # harmless
    with Store(hub.data_dir / "feedback.db") as store:
        store.add_adapter(
            "auto", base=str(demo_model), method="lora", path=str(path), metrics={"stage": "dpo"}
        )
    served = httpx.post(f"{hub.url}/v1/adapters/auto/load", headers=ADMIN, timeout=60).json()["served_as"]
    waiting = httpx.get(f"{hub.url}/v1/adapters/auto/promotion", headers=ADMIN, timeout=300).json()
    assert waiting["verdict"] == "not_yet" and "needs 10" in waiting["reasons"][0]
    incumbent = waiting["incumbent"]
    with Store(hub.data_dir / "feedback.db") as store:  # 11 wins of 12 against the incumbent
        for i in range(12):
            prompt = [{"role": "user", "content": f"question {i}"}]
            mine = store.add_generation(prompt=prompt, model=served, text="good")
            theirs = store.add_generation(prompt=prompt, model=incumbent, text="bad")
            store.add_pairwise(mine.id, theirs.id, "a" if i else "b", rater="scripted")
    checked = httpx.post(f"{hub.url}/v1/adapters/auto-promote", headers=ADMIN, timeout=300).json()
    assert checked["auto"] is True
    mine = next(d for d in checked["data"] if d["candidate"] == served)
    assert mine["verdict"] == "promote" and "won 92% of 12 votes" in mine["reasons"][0]
    statuses = {
        a["id"]: a["status"] for a in httpx.get(f"{hub.url}/v1/adapters", headers=ADMIN).json()["data"]
    }
    assert statuses["auto@1"] == "promoted"
    models = httpx.get(f"{hub.url}/v1/models/tunehub-default", headers=ADMIN, timeout=30).json()
    assert models["root"] == served  # tunehub-default now serves it


def test_tunehub_adapters_promote_is_guarded_too(tmp_path, full_demo_model):
    path = make_lora_adapter(full_demo_model, tmp_path / "broken", rank=8, seed=1, scale=30.0)
    with Store(tmp_path / "feedback.db") as store:
        store.add_adapter("broken", base=str(full_demo_model), method="lora", path=str(path))

    def run(*args: str) -> tuple[int, str, str]:
        return tunehub("adapters", "promote", *args, "--data-dir", str(tmp_path))

    code, _, err = run("broken")
    assert code == 1 and "broken@1 is not promoted: checkable accuracy fell" in err
    assert (tmp_path / "replay" / "broken-v1.json").is_file()
    assert run("broken", "--override")[:2] == (0, "broken@1 promoted\n")


def test_the_replay_carries_the_reward_models_scores(tmp_path, demo_model):
    """A registered reward model (here an untrained scoring head on the demo model) scores both sides."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hub.adapters_service import AdapterService
    from hub.feedback_service import FeedbackService
    from hub.promotion_service import PromotionService

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    judge = AutoModelForSequenceClassification.from_pretrained(
        demo_model, num_labels=1, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id
    )
    judge.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    candidate = make_lora_adapter(demo_model, tmp_path / "cand", rank=4, seed=3, scale=3.0)
    with Store(tmp_path / "feedback.db") as store:
        store.add_adapter(
            "judge",
            base=str(demo_model),
            method="full",
            path=str(tmp_path / "judge"),
            metrics={"stage": "reward"},
        )
        store.add_adapter(
            "cand", base=str(demo_model), method="lora", path=str(candidate), metrics={"stage": "dpo"}
        )
        adapters = AdapterService(store)
        promotion = PromotionService(store, adapters, FeedbackService(store), tmp_path)
        report = promotion.replay("cand")
    assert report["reward_model"] == str(tmp_path / "judge")
    for side in ("candidate", "incumbent"):
        assert isinstance(report[side]["reward"], float)
        assert all(isinstance(row[f"{side}_reward"], float) for row in report["rows"])
    assert (
        report["candidate"]["reward"] != report["incumbent"]["reward"]
    )  # different answers, different scores
