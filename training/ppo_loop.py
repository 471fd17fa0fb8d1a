"""The PPO training loop of `training.ppo`: rollouts, scoring, updates, logging and resumable checkpoints.

One step = sample answers to a rollout batch of prompts, score them, compute per-token rewards, GAE and
whitened advantages under the rollout policy (no gradients), then `ppo_epochs` passes of minibatch updates
of the clipped policy and value losses. Progress goes to transformers `TrainerCallback`s (the job runner's
progress file) through `on_train_begin`/`on_step_end`/`on_log`/`on_evaluate`, as from a Trainer.

The model stays in eval mode throughout: dropout would make the log-probabilities of the update differ
from the rollout's even before any update (TRL's PPO turned dropout off for the same reason).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from training.config import logging_interval
from training.ppo_checkpoint import load_checkpoint, save_checkpoint
from training.ppo_core import (
    gae,
    logprobs_and_entropy,
    masked_mean,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)

Messages = list[dict[str, str]]
REFERENCE_ADAPTER = "reference"  # the frozen copy of a parent adapter, beside the trained "default"


def drop_long_prompts(prompts: list[Messages], tokenizer, limit: int) -> tuple[list[Messages], int]:
    """The prompts whose chat template (with the assistant turn opened) fits in `limit` tokens; and how many
    did not."""
    kept = [
        prompt
        for prompt in prompts
        if len(
            tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        <= limit
    ]
    return kept, len(prompts) - len(kept)


class PPOLoop:
    """Policy (with or without adapters), value head, optimizer and schedule for one PPO run."""

    def __init__(
        self,
        config,
        model,
        reference,
        tokenizer,
        reward_fn,
        *,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        callbacks: list | None = None,
        checkpoint_dir: Path | None = None,
    ) -> None:
        self.config, self.model, self.reference = config, model.to(device).eval(), reference
        self.tokenizer, self.reward_fn, self.device = tokenizer, reward_fn, device
        self.autocast_dtype, self.callbacks, self.checkpoint_dir = (
            autocast_dtype,
            callbacks or [],
            checkpoint_dir,
        )
        if reference is not None:
            reference.to(device).eval()
        torch.manual_seed(config.seed)
        hidden = model.config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(hidden, 1).to(device)
        torch.nn.init.normal_(self.value_head.weight, std=1 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.value_head.bias)
        self.parameters = [p for p in model.parameters() if p.requires_grad] + list(
            self.value_head.parameters()
        )
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(enabled=autocast_dtype is torch.float16)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.history: list[dict[str, float]] = []
        self._last_losses: tuple[float, float] = (0.0, 0.0)

    # -- forward passes ----------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def forward(self, model, query_responses, attention_mask, context_length: int, with_values: bool):
        """(log-probs, entropy, values or None) of each response token, at the rollout temperature."""
        position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)
        with self._autocast():
            output = model(
                input_ids=query_responses,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=with_values,
            )
        logits = output.logits[:, context_length - 1 : -1].float() / self.config.temperature
        logprobs, entropy = logprobs_and_entropy(logits, query_responses[:, context_length:])
        values = None
        if with_values:
            hidden = output.hidden_states[-1][:, context_length - 1 : -1].float()
            values = self.value_head(hidden).squeeze(-1)
        return logprobs, entropy, values

    def reference_logprobs(self, query_responses, attention_mask, context_length: int):
        if self.reference is not None:
            return self.forward(self.reference, query_responses, attention_mask, context_length, False)[0]
        if REFERENCE_ADAPTER in getattr(self.model, "peft_config", {}):
            # A frozen copy of the parent adapter. Activating it freezes "default"; switching back unfreezes
            # it (PEFT's set_adapter), and nothing here needs gradients.
            self.model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                return self.forward(self.model, query_responses, attention_mask, context_length, False)[0]
            finally:
                self.model.set_adapter("default")
        with self.model.disable_adapter():  # the reference: the same weights without the adapter
            return self.forward(self.model, query_responses, attention_mask, context_length, False)[0]

    # -- rollouts ----------------------------------------------------------------------------------------

    def encode(self, prompts: list[Messages]):
        texts = [
            self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts
        ]
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @torch.no_grad()
    def sample(self, prompts: list[Messages]) -> dict[str, Any]:
        """Answers to `prompts` with the current policy, cut after their first EOS, and their texts."""
        from transformers import GenerationConfig

        input_ids, prompt_mask = self.encode(prompts)
        generation = GenerationConfig(
            max_new_tokens=self.config.response_length,
            do_sample=True,
            temperature=self.config.temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        with self._autocast():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=prompt_mask, generation_config=generation
            )
        context_length = input_ids.shape[1]
        responses = output[:, context_length:]
        if responses.shape[1] < self.config.response_length:  # every answer ended early
            pad = responses.new_full(
                (len(responses), self.config.response_length - responses.shape[1]), self.pad_id
            )
            responses = torch.cat([responses, pad], dim=1)
        is_eos = responses == self.eos_id
        ended = is_eos.any(dim=1)
        first_eos = torch.where(
            ended, is_eos.float().argmax(dim=1), torch.full_like(ended, responses.shape[1], dtype=torch.long)
        )
        positions = torch.arange(responses.shape[1], device=self.device)
        mask = (positions[None, :] <= first_eos[:, None]).float()
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, self.pad_id))
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return {
            "query_responses": torch.cat([input_ids, responses], dim=1),
            "attention_mask": torch.cat([prompt_mask, mask.long()], dim=1),
            "context_length": context_length,
            "mask": mask,
            "ended": ended,
            "texts": texts,
        }

    def score(self, prompts: list[Messages], rollout: dict[str, Any]) -> torch.Tensor:
        """The reward function's scores, minus the missing-EOS penalty for answers that never ended."""
        completions = [[{"role": "assistant", "content": text}] for text in rollout["texts"]]
        scores = torch.tensor(self.reward_fn(prompts=prompts, completions=completions), dtype=torch.float32)
        scores = scores.to(self.device)
        return scores - self.config.missing_eos_penalty * (~rollout["ended"]).float()

    # -- one step ----------------------------------------------------------------------------------------

    def step(self, prompts: list[Messages]) -> dict[str, float]:
        config = self.config
        rollout = self.sample(prompts)
        scores = self.score(prompts, rollout)
        qr, attn, ctx, mask = (
            rollout[k] for k in ("query_responses", "attention_mask", "context_length", "mask")
        )
        with torch.no_grad():
            old_logprobs, entropy, old_values = self.forward(self.model, qr, attn, ctx, True)
            ref_logprobs = self.reference_logprobs(qr, attn, ctx)
            rewards, kl = token_rewards(scores, old_logprobs, ref_logprobs, mask, config.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
            advantages = whiten(advantages, mask)
        parts: dict[str, list[float]] = {
            k: [] for k in ("policy", "value", "clip", "vclip", "approx_kl", "entropy")
        }
        batch = len(prompts)
        size = max(1, batch // config.num_minibatches)
        for _ in range(config.ppo_epochs):
            order = torch.randperm(batch, device=self.device)
            for start in range(0, batch, size):
                rows = order[start : start + size]
                logprobs, mb_entropy, values = self.forward(self.model, qr[rows], attn[rows], ctx, True)
                pg_loss, clip, approx_kl = policy_loss(
                    logprobs, old_logprobs[rows], advantages[rows], mask[rows], config.cliprange
                )
                vf_loss, vclip = value_loss(
                    values, old_values[rows], returns[rows], mask[rows], config.cliprange_value
                )
                loss = pg_loss + config.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.parameters, config.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                for key, value in (
                    ("policy", pg_loss),
                    ("value", vf_loss),
                    ("clip", clip),
                    ("vclip", vclip),
                    ("approx_kl", approx_kl),
                    ("entropy", masked_mean(mb_entropy.detach(), mask[rows])),
                ):
                    parts[key].append(float(value.detach()))
        self._last_losses = (parts["policy"][-1], parts["value"][-1])
        lengths = mask.sum(dim=1)
        kl_per_answer = kl.sum(dim=1)

        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        return {
            "score": float(scores.mean()),
            "reward": float((scores - config.kl_coef * kl_per_answer).mean()),
            "kl": float(kl_per_answer.mean()),
            "loss": mean(parts["policy"]) + config.vf_coef * mean(parts["value"]),
            "policy_loss": mean(parts["policy"]),
            "value_loss": mean(parts["value"]),
            "clip_fraction": mean(parts["clip"]),
            "value_clip_fraction": mean(parts["vclip"]),
            "approx_kl": mean(parts["approx_kl"]),
            "entropy": mean(parts["entropy"]),
            "rollout_entropy": float(masked_mean(entropy, mask)),
            "response_length": float(lengths.mean()),
            "eos_fraction": float(rollout["ended"].float().mean()),
            "learning_rate": self.scheduler.get_last_lr()[0],
        }

    def last_losses(self) -> tuple[float, float]:
        return self._last_losses

    @torch.no_grad()
    def evaluate(self, prompts: list[Messages]) -> dict[str, float]:
        """Mean score (with the EOS penalty) and length of one sampled answer per held-out prompt."""
        scores, lengths = [], []
        size = self.config.rollout_batch_size
        for start in range(0, len(prompts), size):
            chunk = prompts[start : start + size]
            rollout = self.sample(chunk)
            scores.extend(self.score(chunk, rollout).tolist())
            lengths.extend(rollout["mask"].sum(dim=1).tolist())
        return {"eval_score": sum(scores) / len(scores), "eval_response_length": sum(lengths) / len(lengths)}

    # -- the run -----------------------------------------------------------------------------------------

    def train(self, prompts: list[Messages], eval_prompts: list[Messages], steps: int) -> dict[str, Any]:
        from transformers import TrainerControl, TrainerState, get_scheduler

        config = self.config
        total_updates = steps * config.ppo_epochs * config.num_minibatches
        self.scheduler = get_scheduler(
            config.lr_scheduler,
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * total_updates),
            num_training_steps=total_updates,
        )
        start_step = load_checkpoint(self, self.checkpoint_dir) if config.resume else 0
        state = TrainerState(max_steps=steps, global_step=start_step)
        control = TrainerControl()
        args = SimpleNamespace(metric_for_best_model="eval_score", output_dir=str(self.checkpoint_dir or ""))
        self._notify("on_train_begin", args, state, control)
        evals: list[list[float]] = []
        eval_start = None
        if eval_prompts:
            eval_start = self.evaluate(eval_prompts)
            evals.append([start_step, round(eval_start["eval_score"], 5)])
            self._notify("on_evaluate", args, state, control, metrics=eval_start)
        started = time.perf_counter()
        stream = self._prompt_stream(prompts)
        every = logging_interval(config, steps)
        for step in range(start_step, steps):
            batch = [prompts[i] for i in stream(step)]
            stats = self.step(batch)
            self.history.append({"step": step + 1, **stats})
            state.global_step = step + 1
            self._notify("on_step_end", args, state, control)
            if (step + 1) % every == 0 or step + 1 == steps:
                window = self.history[-every:]
                logs = {key: sum(h[key] for h in window) / len(window) for key in stats}
                state.log_history.append({**logs, "step": step + 1})
                self._notify("on_log", args, state, control, logs=logs)
            if not all(math.isfinite(v) for v in self._last_losses):
                break
            if (
                config.eval_steps
                and eval_prompts
                and (step + 1) % config.eval_steps == 0
                and step + 1 < steps
            ):
                metrics = self.evaluate(eval_prompts)
                evals.append([step + 1, round(metrics["eval_score"], 5)])
                self._notify("on_evaluate", args, state, control, metrics=metrics)
            if config.checkpoint_steps and (step + 1) % config.checkpoint_steps == 0 and step + 1 < steps:
                save_checkpoint(self, self.checkpoint_dir, step + 1)
                self._notify("on_save", args, state, control)
            if control.should_training_stop:
                break
        train_seconds = time.perf_counter() - started
        eval_end = self.evaluate(eval_prompts) if eval_prompts else {}
        if eval_end:
            evals.append([state.global_step, round(eval_end["eval_score"], 5)])
            self._notify("on_evaluate", args, state, control, metrics=eval_end)
        self._notify("on_train_end", args, state, control)
        return self._metrics(steps, start_step, state.global_step, train_seconds, evals, eval_start, eval_end)

    def _metrics(self, steps, start_step, done, seconds, evals, eval_start, eval_end) -> dict[str, Any]:
        history, config = self.history, self.config
        head = history[: min(5, len(history))]
        tail = history[-min(5, len(history)) :]

        def mean(rows, key):
            return round(sum(r[key] for r in rows) / len(rows), 5) if rows else None

        return {
            "steps": done,
            "max_steps": steps,
            "episodes": (done - start_step) * config.rollout_batch_size,
            "resumed_from_step": start_step or None,
            "train_seconds": round(seconds, 2),
            "first_score": mean(head, "score"),
            "last_score": mean(tail, "score"),
            "first_kl": mean(head, "kl"),
            "last_kl": mean(tail, "kl"),
            "max_kl": max((round(h["kl"], 5) for h in history), default=None),
            "last_response_length": mean(tail, "response_length"),
            "last_eos_fraction": mean(tail, "eos_fraction"),
            "score_curve": [[h["step"], round(h["score"], 5)] for h in history],
            "kl_curve": [[h["step"], round(h["kl"], 5)] for h in history],
            "eval_metric": "eval_score" if evals else None,
            "eval_curve": evals,
            "eval_score_start": eval_start.get("eval_score") if eval_start else None,
            "eval_score": eval_end.get("eval_score") if eval_end else None,
            "log": [{k: round(v, 5) for k, v in h.items()} for h in history],
        }

    def _prompt_stream(self, prompts: list[Messages]):
        """Step -> the prompt indices of its rollout batch: seeded shuffles of all prompts, one after another,
        so a resumed run takes the same batches."""
        size, n = self.config.rollout_batch_size, len(prompts)

        def indices(step: int) -> list[int]:
            picked = []
            for position in range(step * size, (step + 1) * size):
                epoch, offset = divmod(position, n)
                order = list(range(n))
                random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
                picked.append(order[offset])
            return picked

        return indices

    def _notify(self, event: str, args, state, control, **kwargs) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(args, state, control, **kwargs)
