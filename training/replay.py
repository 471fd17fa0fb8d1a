"""Regression replay: a prompt set answered greedily by a candidate adapter and by the promoted model (or the
base), with accuracy on checkable prompts, the mean per-token KL from the base, perplexity on a held-out
text (real models) and the reward model's scores when one is given; the base's answers are kept too, for the
per-prompt flip report (training/replay_flips.py) against both. The promotion guard
(feedback/promotion_rule.py) reads the result.

    report = await replay_on_engine(engine, replay_set(base), candidate="km@v2", incumbent=None)
    report = run_replay(base, candidate="/adapters/km-v2", incumbent=None)   # blocking, its own engine
    report["candidate"]["accuracy"], report["candidate"]["kl"], report["rows"][0]["candidate"]

The prompt set is chosen for the model (`training.replay_sets`): the demo model's own held-out checkable
prompts in the families it can do, else the general set the project ships plus perplexity on a held-out
text; ``TUNEHUB_REPLAY_PROMPTS`` (a JSONL of ``{"messages": [...], "answer": "..."}`` rows) replaces it.

Everything runs through the serving engine (`serving.engine.Engine`): answers with its batched `generate`
(greedy) under the adapter's served name, log-probabilities with its `score`. The hub replays on the engine
it serves with; `run_replay` (the CLI, tests) starts a float32 local engine of its own.

KL: the per-token Monte-Carlo estimate on the model's own greedy answer, ``mean over answer tokens of
log p_model(token) - log p_base(token)`` (the tokens as generated, end-of-turn included), in nats. It
estimates KL(p_model || p_base) from one sample per position (the greedy one, so it leans towards the
model's most confident tokens) and needs only the log-probability of the tokens, which any engine gives
(vLLM: ``prompt_logprobs``). `mean_kl` computes the full-vocabulary figure the replay used before (and the
drift watch in training uses); on the demo model the two agree closely (tests/test_replay_engine.py prints
both). A zero adapter gives 0 either way.

Perplexity: ``exp(-mean log p(token))`` over the held-out text's tokens (each paragraph scored on its own,
its first token as context), for the base, the incumbent and the candidate. The guard refuses a candidate whose perplexity rose
more than ``max_perplexity_rise`` over the incumbent's.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from training.demo.corpus import CheckablePrompt
from training.replay_flips import flip_report
from training.replay_sets import DEMO_MAX_NEW_TOKENS, ReplaySet, check_reply, demo_prompts, load_prompts_file

DEFAULT_PROMPTS = 50
MAX_NEW_TOKENS = DEMO_MAX_NEW_TOKENS


def load_prompts(path: str | Path | None = None, n: int = DEFAULT_PROMPTS) -> list[CheckablePrompt]:
    """``path`` (JSONL) if given, else ``n`` held-out checkable prompts of the demo corpus, in the families
    the demo model can do (`training.replay_sets.replay_set` chooses for a model)."""
    return demo_prompts(n) if path is None else load_prompts_file(path)


def greedy_answers(model, tokenizer, prompts: list[CheckablePrompt], max_new_tokens: int) -> list[str]:
    """Each prompt's greedy answer, in batches of 32 (``tokenizer`` pads on the left)."""
    import torch

    replies = []
    for start in range(0, len(prompts), 32):
        batch = prompts[start : start + 32]
        texts = tokenizer.apply_chat_template(
            [p.messages for p in batch], add_generation_prompt=True, tokenize=False
        )
        inputs = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(
            model.device
        )
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        replies += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return replies


def mean_kl(model, tokenizer, prompts: list[CheckablePrompt], replies: list[str], reference=None) -> float:
    """Mean per-token KL(model || reference) over the answer positions of ``replies``; without a
    ``reference`` model it is the same model with its adapters disabled (the base)."""
    import torch
    import torch.nn.functional as F

    total, tokens = 0.0, 0
    for prompt, reply in zip(prompts, replies, strict=True):
        prefix = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
        answer_ids = tokenizer(reply, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if answer_ids.shape[1] == 0:
            continue
        ids = torch.cat([prompt_ids, answer_ids], dim=1).to(model.device)
        # logits at position t predict token t+1: the answer's tokens are predicted from prompt_len-1 on
        window = slice(prompt_ids.shape[1] - 1, ids.shape[1] - 1)
        with torch.no_grad():
            adapted = F.log_softmax(model(input_ids=ids).logits[0, window].float(), dim=-1)
            if reference is not None:
                base = F.log_softmax(reference(input_ids=ids).logits[0, window].float(), dim=-1)
            else:
                with model.disable_adapter():
                    base = F.log_softmax(model(input_ids=ids).logits[0, window].float(), dim=-1)
        total += float((adapted.exp() * (adapted - base)).sum())
        tokens += answer_ids.shape[1]
    return total / tokens if tokens else 0.0


def text_perplexity(model, tokenizer, passages: list[str]) -> float | None:
    """Perplexity of the held-out text's `passages` under `model`, as `engine_perplexity` takes it through an
    engine: every token of every passage but its first, each passage on its own (the drift watch in
    training measures it at each evaluation)."""
    import torch
    import torch.nn.functional as F

    total, tokens = 0.0, 0
    for passage in passages:
        ids = tokenizer(passage, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            logprobs = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        total += float(logprobs.gather(1, ids[0, 1:, None]).sum())
        tokens += ids.shape[1] - 1
    return math.exp(-total / tokens) if tokens else None


# ----- through the engine ---------------------------------------------------------------------------------


async def engine_answers(engine, prompts: list[CheckablePrompt], adapter: str | None, max_new_tokens: int):
    """Each prompt's greedy answer through the engine, all at once (it batches them): [(text, token ids)]."""
    from serving.engine import GenerationRequest, SamplingParams

    async def answer(prompt: CheckablePrompt) -> tuple[str, list[int]]:
        request = GenerationRequest(
            sampling=SamplingParams(max_tokens=max_new_tokens, temperature=0.0),
            messages=prompt.messages,
            adapter=adapter,
        )
        text, ids = [], []
        async for delta in engine.generate(request):
            text.append(delta.text)
            ids.extend(delta.token_ids)
        return "".join(text), ids

    return await asyncio.gather(*(answer(p) for p in prompts))


async def engine_kl(engine, prompts: list[CheckablePrompt], answers, adapter: str) -> float:
    """Mean over answer tokens of log p_adapter - log p_base (the greedy Monte-Carlo KL estimate)."""
    from serving.engine import ScoreRequest

    requests = []
    for prompt, (text, ids) in zip(prompts, answers, strict=True):
        if ids or text:  # an engine that streams no token ids (vLLM here) has the text tokenised
            for side in (adapter, None):
                requests.append(
                    ScoreRequest(
                        messages=prompt.messages,
                        continuation_ids=ids,
                        continuation=None if ids else text,
                        adapter=side,
                    )
                )
    if not requests:
        return 0.0
    scored = await engine.score(requests)
    total, tokens = 0.0, 0
    for mine, base in zip(scored[0::2], scored[1::2], strict=True):
        for a, b in zip(mine.continuation_logprobs, base.continuation_logprobs, strict=True):
            total += a - b
            tokens += 1
    return total / tokens if tokens else 0.0


def text_passages(text: str) -> list[str]:
    """The held-out text's paragraphs (blank-line separated), each scored on its own."""
    return [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]


async def engine_perplexity(engine, text: str, adapters: dict[str, str | None]) -> dict[str, Any]:
    """Perplexity of `text` under each of `adapters` (label -> served name, None: the base): every token of
    every paragraph but its first, scored through the engine (vLLM: its prompt_logprobs)."""
    from serving.engine import ScoreRequest

    passages = text_passages(text)
    out: dict[str, Any] = {}
    for label, adapter in adapters.items():
        scored = await engine.score([ScoreRequest(prompt=p, adapter=adapter) for p in passages])
        logprobs = [lp for s in scored for lp in s.logprobs if lp is not None]
        out[label] = math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None
        out["tokens"] = len(logprobs)
    return out


def _summary(
    name: str, prompts: list[CheckablePrompt], replies: list[str], kl: float | None
) -> dict[str, Any]:
    checkable = [(p, r) for p, r in zip(prompts, replies, strict=True) if p.answer]
    accuracy = sum(check_reply(p, r) for p, r in checkable) / len(checkable) if checkable else None
    return {"name": name, "accuracy": accuracy, "kl": kl, "checkable": len(checkable)}


async def replay_on_engine(
    engine,
    replay: ReplaySet,
    *,
    candidate: str,
    incumbent: str | None = None,
    candidate_name: str = "candidate",
    incumbent_name: str = "base",
) -> dict[str, Any]:
    """Answer the replay set greedily with the served adapter `candidate` and with `incumbent` (a served
    adapter, or None for the base) on `engine`; returns the report (JSON-ready): per-model ``accuracy``,
    ``kl`` (from the base), ``perplexity`` (when the set has a text), and one row per prompt."""
    prompts, max_new = replay.prompts, replay.max_new_tokens
    # the base's answers too when the incumbent is an adapter: the flip report compares against both
    models = [candidate, incumbent] + ([None] if incumbent is not None else [])
    candidate_answers, incumbent_answers, *base_answers = await asyncio.gather(
        *(engine_answers(engine, prompts, model, max_new) for model in models)
    )
    candidate_kl = await engine_kl(engine, prompts, candidate_answers, candidate)
    incumbent_kl = (
        0.0 if incumbent is None else await engine_kl(engine, prompts, incumbent_answers, incumbent)
    )
    candidate_replies = [text for text, _ in candidate_answers]
    incumbent_replies = [text for text, _ in incumbent_answers]
    base_replies = [text for text, _ in base_answers[0]] if base_answers else incumbent_replies
    report: dict[str, Any] = {
        "candidate": _summary(candidate_name, prompts, candidate_replies, candidate_kl),
        "incumbent": _summary(incumbent_name, prompts, incumbent_replies, incumbent_kl),
        "rows": [
            {
                "messages": p.messages,
                "answer": p.answer or None,
                "candidate": c,
                "incumbent": i,
                "candidate_correct": check_reply(p, c) if p.answer else None,
                "incumbent_correct": check_reply(p, i) if p.answer else None,
                "base": b,
                "base_correct": check_reply(p, b) if p.answer else None,
            }
            for p, c, i, b in zip(prompts, candidate_replies, incumbent_replies, base_replies, strict=True)
        ],
        "max_new_tokens": max_new,
        "replay_set": {"kind": replay.kind, "source": replay.source, "prompts": len(prompts)},
        "kl_estimate": "greedy: mean log p_model - log p_base over the model's own greedy answer tokens",
    }
    if replay.text:
        sides = {"base": None, "incumbent": incumbent, "candidate": candidate}
        if incumbent is None:
            del sides["incumbent"]
        perplexity = await engine_perplexity(engine, replay.text, sides)
        perplexity.setdefault("incumbent", perplexity["base"])
        report["perplexity"] = perplexity
        report["candidate"]["perplexity"] = perplexity["candidate"]
        report["incumbent"]["perplexity"] = perplexity["incumbent"]
    report["against"] = incumbent_name if incumbent is not None else "base"
    report["flips"] = flip_report(report)
    return report


def add_rewards(report: dict[str, Any], prompts: list[CheckablePrompt], reward_model, base) -> None:
    """The reward model's score of each side's answers: per model (``reward``, the mean) and per row."""
    from training.rewards import RewardModelScorer

    scorer = RewardModelScorer.load(reward_model, str(base))
    messages = [p.messages for p in prompts]
    for side in ("candidate", "incumbent"):
        replies = [row[side] for row in report["rows"]]
        scores = scorer(messages, [[{"role": "assistant", "content": r}] for r in replies])
        report[side]["reward"] = sum(scores) / len(scores) if scores else None
        for row, score in zip(report["rows"], scores, strict=True):
            row[f"{side}_reward"] = score
    report["reward_model"] = str(reward_model)


def run_replay(
    base: str | Path,
    candidate: str | Path,
    incumbent: str | Path | None = None,
    *,
    prompts: list[CheckablePrompt] | None = None,
    replay: ReplaySet | None = None,
    candidate_name: str = "candidate",
    incumbent_name: str = "base",
    reward_model: str | Path | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """`replay_on_engine` on a float32 local engine of its own, with the ``candidate`` adapter directory and
    ``incumbent`` (an adapter directory, or None for the base) loaded into it (a full or freeze fine-tune's
    directory is opened as a model of its own beside the base); for callers without a
    running engine (`tunehub adapters promote`, tests). Blocking: call it from a worker thread."""
    from training.replay_sets import replay_set

    chosen = replay or replay_set(base)
    if prompts is not None:
        chosen = ReplaySet("custom", prompts, chosen.text, chosen.max_new_tokens, "given")
    if max_new_tokens is not None:
        chosen.max_new_tokens = max_new_tokens

    async def replay_here() -> dict[str, Any]:
        from serving.loader import load_local_engine
        from serving.model_set import ModelSet

        def open_model(name: str, path: Path):  # a full or freeze fine-tune: an engine of its own
            return load_local_engine(str(path), model_name=name, dtype="float32")

        loaded = await asyncio.to_thread(load_local_engine, str(base), model_name="base", dtype="float32")
        engine = ModelSet(loaded, open_model=open_model)
        await engine.start()
        try:
            await engine.load_adapter("candidate", Path(candidate))
            if incumbent is not None:
                await engine.load_adapter("incumbent", Path(incumbent))
            return await replay_on_engine(
                engine,
                chosen,
                candidate="candidate",
                incumbent="incumbent" if incumbent is not None else None,
                candidate_name=candidate_name,
                incumbent_name=incumbent_name,
            )
        finally:
            await engine.close()

    report = asyncio.run(replay_here())
    if reward_model is not None:
        add_rewards(report, chosen.prompts, reward_model, base)
    return report
