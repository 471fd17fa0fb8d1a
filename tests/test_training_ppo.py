"""PPO stage (written here; TRL 1.16 has no PPOTrainer): the arithmetic against hand-computed cases, a run
that raises a toy reward (answers opening with a digit) by a clear margin and saves an adapter that plain
`PeftModel.from_pretrained` loads and that answers the same way, the KL penalty holding the policy nearer
the reference, and a run end to end with a reward model `training.reward` trained.

Run: .venv/bin/python -m pytest tests/test_training_ppo.py -q   (add -m "not slow" for the quick ones)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from feedback.errors import Invalid
from tests.support.rl import opens_with_a_digit, prompts_file, train_reward_model
from training.demo.corpus import checkable_prompts
from training.ppo import VALUE_HEAD_FILE, PPOConfig, main, parse_args
from training.ppo_core import gae, policy_loss, token_rewards, value_loss, whiten
from training.result import METADATA_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ppo_config(model: Path, data: Path, out: Path, **changes) -> PPOConfig:
    settings = {
        "max_steps": 15,
        "learning_rate": 1e-3,
        "response_length": 24,
        "temperature": 1.0,
        "logging_steps": 5,
    }
    settings.update(changes)
    return PPOConfig(model=str(model), data=str(data), output_dir=str(out), **settings)


# -- the arithmetic, by hand ----------------------------------------------------------------------------


def test_gae_matches_a_hand_computed_case_and_stops_at_each_rows_end():
    rewards = torch.tensor([[0.1, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.2], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2 ended after 2 tokens
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 1, backwards: delta2 = 1 - 0.2 = 0.8; delta1 = 0.9 * 0.2 - 0.4 = -0.22, A1 = -0.22 + 0.72 * 0.8;
    # delta0 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04, A0 = -0.04 + 0.72 * A1.
    a1 = -0.22 + 0.72 * 0.8
    expected_1 = [-0.04 + 0.72 * a1, a1, 0.8]
    # Row 2: the padded token's reward and value are ignored: delta1 = 2 + 0 - 1 = 1; delta0 = 0.9 - 1.
    expected_2 = [-0.1 + 0.72 * 1.0, 1.0, 0.0]
    assert advantages[0].tolist() == pytest.approx(expected_1, abs=1e-6)
    assert advantages[1].tolist() == pytest.approx(expected_2, abs=1e-6)
    assert returns[0].tolist() == pytest.approx(
        [a + v for a, v in zip(expected_1, [0.5, 0.4, 0.2])], abs=1e-6
    )
    assert returns[1].tolist() == pytest.approx([0.62 + 1.0, 2.0, 0.0], abs=1e-6)


def test_whitening_uses_only_the_response_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 2, unbiased variance 1: (-1, 0, 1), the padding stays 0
    assert whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    assert whiten(values, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)


def test_token_rewards_put_the_kl_on_every_token_and_the_score_on_the_last():
    scores = torch.tensor([2.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.05, 2.0, 0.0])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5]]))  # ratios 1.5, 0.5, 0.5
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, clip_fraction, _ = policy_loss(new, old, advantages, mask, cliprange=0.2)
    # max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5; max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3)
    assert clip_fraction.item() == pytest.approx(2 / 3)


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[1.0, 0.0]])
    loss, clip_fraction = value_loss(new, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 1: unclipped (1 - 1)^2 = 0, clipped (0.2 - 1)^2 = 0.64 -> 0.64; token 2: both 0.01
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)


def test_ppo_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="rollout_batch_size 10 is not divisible by num_minibatches 4"):
        PPOConfig(model="m", data="d", output_dir="o", rollout_batch_size=10, num_minibatches=4)
    with pytest.raises(ValueError, match="lam must be in \\[0, 1\\], got 1.5"):
        PPOConfig(model="m", data="d", output_dir="o", lam=1.5)
    with pytest.raises(ValueError, match="kl_coef must not be negative, got -0.1"):
        PPOConfig(model="m", data="d", output_dir="o", kl_coef=-0.1)
    with pytest.raises(ValueError, match="response_length 2048 must be below max_length 1024"):
        PPOConfig(model="m", data="d", output_dir="o", response_length=2048)
    config = parse_args(
        ["--model", "m", "--data", "d", "--output-dir", "o", "--kl-coef", "0.2", "--ppo-epochs", "2"]
    )
    assert (config.kl_coef, config.ppo_epochs, config.method) == (0.2, 2, "lora")


def test_prompts_come_from_prompt_rows_or_once_each_from_chat_rows(tmp_path):
    from tests.support.rl import digit_first_pairs
    from tests.support.rows import write_jsonl
    from training.data import load_training_data

    pairs = digit_first_pairs(6, seed=1, split="train")
    data = load_training_data(
        write_jsonl(tmp_path / "pairs.jsonl", pairs + pairs), "prompts", eval_fraction=0
    )
    assert data.train == [{"prompt": row["prompt"]} for row in pairs]
    data = load_training_data(prompts_file(tmp_path / "prompts.jsonl", n=5), "prompts", eval_fraction=0)
    assert len(data.train) == 5 and set(data.train[0]) == {"prompt"}


def test_ppo_without_a_reward_model_is_refused_before_loading(demo_model, tmp_path):
    data = prompts_file(tmp_path / "prompts.jsonl", n=4)
    with pytest.raises(Invalid, match="--reward-model"):
        main(ppo_config(demo_model, data, tmp_path / "ppo"))


# -- learning -------------------------------------------------------------------------------------------


def digit_share(model, tokenizer, n: int = 48, seed: int = 7) -> float:
    """Share of sampled answers (temperature 1) to held-out prompts that open with a digit."""
    from training.ppo_loop import PPOLoop

    prompts = [p.messages for p in checkable_prompts(n, seed=seed, split="heldout")]
    config = PPOConfig(model="m", data="d", output_dir="o", response_length=24, temperature=1.0, seed=seed)
    loop = PPOLoop(config, model, None, tokenizer, opens_with_a_digit, device=torch.device("cpu"))
    texts = loop.sample(prompts)["texts"]
    return sum(opens_with_a_digit(prompts, texts)) / len(texts)


def test_ppo_raises_a_toy_reward_and_saves_a_loadable_adapter(demo_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = prompts_file(tmp_path / "prompts.jsonl")
    out = main(ppo_config(demo_model, data, tmp_path / "ppo"), reward_fn=opens_with_a_digit)
    metadata = json.loads((out / METADATA_FILE).read_text())
    metrics = metadata["metrics"]
    print(
        f"PPO toy reward: mean score {metrics['first_score']:.2f} (first 5 steps) -> {metrics['last_score']:.2f} "
        f"(last 5); KL {metrics['first_kl']:.2f} -> {metrics['last_kl']:.2f} nats/answer; "
        f"{metrics['steps']} steps, {metrics['train_seconds']} s"
    )
    assert metrics["last_score"] >= metrics["first_score"] + 0.25 and metrics["last_score"] >= 0.8
    # Every logged quantity is there and finite.
    last = metrics["log"][-1]
    for key in ("score", "kl", "policy_loss", "value_loss", "clip_fraction", "entropy", "response_length"):
        assert key in last and last[key] == last[key]
    assert (metadata["stage"], metadata["method"], metadata["parent"]) == ("ppo", "lora", None)
    assert metadata["dataset"]["kind"] == "prompts" and metadata["dataset"]["n_train"] == 64
    assert (out / VALUE_HEAD_FILE).is_file()

    # The adapter loads the plain way and answers as trained, more than the base does.
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base_share = digit_share(AutoModelForCausalLM.from_pretrained(demo_model).eval(), tokenizer)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), out).eval()
    tuned_share = digit_share(tuned, tokenizer)
    print(f"held-out answers opening with a digit: base {base_share:.2f}, PPO adapter {tuned_share:.2f}")
    assert tuned_share >= base_share + 0.2


def test_from_a_parent_adapter_the_reference_is_the_parent(demo_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.support.adapters import make_lora_adapter

    parent = make_lora_adapter(demo_model, tmp_path / "parent", rank=4, seed=1, scale=5.0)
    data = prompts_file(tmp_path / "prompts.jsonl", n=8)
    config = ppo_config(
        demo_model, data, tmp_path / "ppo", parent_adapter=str(parent), lora_rank=4, max_steps=2
    )
    out = main(
        dataclasses.replace(config, rollout_batch_size=4, logging_steps=1), reward_fn=opens_with_a_digit
    )
    metadata = json.loads((out / METADATA_FILE).read_text())
    # This parent is far from the base (about 100 nats per answer); against itself the KL starts at 0.
    assert metadata["parent"] == str(parent) and metadata["metrics"]["log"][0]["kl"] == pytest.approx(
        0, abs=1e-3
    )
    assert not (out / "reference").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), out)
    assert list(loaded.peft_config) == ["default"]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(demo_model, tmp_path):
    """Checkpoint at step 2 of 3 (copied aside as a kill would leave it), resume in a fresh process-like run:
    the same batches, samples and updates give the same adapter; the job's progress file gets the events."""
    import shutil

    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from training.jobs.progress import progress_callback

    kept = tmp_path / "kept-checkpoint"

    class KeepCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            shutil.copytree(args.output_dir, kept)

    data = prompts_file(tmp_path / "prompts.jsonl", n=16)
    settings = {"max_steps": 3, "checkpoint_steps": 2, "rollout_batch_size": 8, "logging_steps": 1}
    progress = tmp_path / "progress.jsonl"
    whole = main(
        ppo_config(demo_model, data, tmp_path / "whole", **settings),
        callbacks=[progress_callback(progress, min_interval_s=0), KeepCheckpoint()],
        reward_fn=opens_with_a_digit,
    )
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-2.pt"]
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "log"] == [1, 2, 3]
    assert all({"loss", "score", "kl", "entropy"} <= set(e) for e in events if e["event"] == "log")
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2]

    resumed_out = tmp_path / "resumed"
    shutil.copytree(kept, resumed_out.parent / f".{resumed_out.name}.run")  # where the run keeps checkpoints
    resumed = main(
        ppo_config(demo_model, data, resumed_out, resume=True, **settings), reward_fn=opens_with_a_digit
    )
    metrics = json.loads((resumed / METADATA_FILE).read_text())["metrics"]
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 3 and len(metrics["log"]) == 3
    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_kl_penalty_holds_the_policy_near_the_reference(demo_model, tmp_path):
    data = prompts_file(tmp_path / "prompts.jsonl")
    runs = {}
    for kl_coef in (0.0, 0.5):
        out = main(
            ppo_config(demo_model, data, tmp_path / f"ppo-{kl_coef}", kl_coef=kl_coef, max_steps=15),
            reward_fn=opens_with_a_digit,
        )
        runs[kl_coef] = json.loads((out / METADATA_FILE).read_text())["metrics"]
    free, held = runs[0.0], runs[0.5]
    print(
        f"KL nats/answer over the last 5 steps: kl_coef 0 -> {free['last_kl']:.2f} (max {free['max_kl']:.2f}), "
        f"kl_coef 0.5 -> {held['last_kl']:.2f} (max {held['max_kl']:.2f})"
    )
    assert held["kl_curve"][0][1] == pytest.approx(0.0, abs=0.05)  # a new adapter starts as the reference
    assert held["last_kl"] < 0.6 * free["last_kl"]


@pytest.mark.slow
def test_ppo_with_a_reward_model_from_the_reward_stage(demo_model, tmp_path):
    """End to end with the project's reward model (a LoRA adapter over the demo model, merged for scoring);
    prompts come from the prompts of a pair file."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reward_dir = train_reward_model(demo_model, tmp_path)
    out = main(
        ppo_config(
            demo_model,
            reward_dir.parent / "pairs.jsonl",
            tmp_path / "ppo",
            reward_model=str(reward_dir),
            max_steps=20,
        )
    )
    metrics = json.loads((out / METADATA_FILE).read_text())["metrics"]
    print(
        f"PPO with the reward model: score {metrics['first_score']:.2f} -> {metrics['last_score']:.2f}, KL "
        f"{metrics['last_kl']:.2f}, {metrics['train_seconds']} s"
    )
    assert metrics["last_score"] > metrics["first_score"] + 0.3
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), out)
