"""Flywheel benchmark, as a user runs the loop: scripted raters vote through a running hub the way the UI
lets them, each stage retrains with what the Train tab sends when nothing on it is changed, and the same
rater judges the candidate against the base, blind, on held-out prompts.

    python -m bench.loop [--model DIR|FILE.gguf] [--quick] [--tastes concise,direct] [--stages dpo,sft,ppo]
                         [--votes N] [--judge N] [--max-steps N] [--max-tokens N] [--train-without-headroom]

For each taste a fresh `tunehub serve` (127.0.0.1, temporary data directory) is driven only through its
HTTP API:

1. headroom: on the held-out prompts the base answers greedily and samples 4 answers at the Chat tab's
   default sampling; the headroom is how often one of the samples beats the greedy answer for the rater. A
   taste the base already satisfies (headroom under 30%) cannot be won: it is reported, not counted, and
   not voted on or trained unless `--train-without-headroom` asks for it.
2. votes, as the UI casts them: half are pairwise on two answers sampled at the Arena's settings
   (Arena, regenerate), three in ten a thumb on one answer at the Chat tab's settings, two in ten a ranking
   of 4 answers at the Rank tab's settings; a pair the rater cannot tell apart is a tie, and two answers
   that both fail the rater's first requirement are "both are bad".
3. training: for each stage ``POST /v1/jobs`` with ``data: "feedback"`` and the body the Train tab sends
   unchanged (`hub.ui.train.default_params`; `--max-steps` adds a step cap, printed, where the 2-core time
   budget needs one). ppo first trains a reward model the same way. Each candidate goes live by itself.
4. judging: base and candidate answer the held-out prompts greedily and once at the Chat tab's sampling;
   the rater compares each pair without knowing which is which (ties count half).
5. a stage that misses says what the run measured (bench/loop_reasons.py): for sft, the share of the answers
   it imitates that the rater likes, against the base's own samples; for ppo, how often its reward model
   orders the judged answers as the rater does, apart where the rater's first requirement decides.

The demo model is judged on its corpus's checkable prompts, its accuracy guardrail on those in the families
its replay set holds (`training.replay_sets.DEMO_FAMILIES`: its arithmetic, near 0.3, flips with any change;
every family's accuracy is printed beside it); a real model on
bench/loop_prompts.py (how-to, capitals, open questions) with the job's regression replay as its guardrail
(accuracy on the replay set, and perplexity where the replay reports it). Targets (issue 13): demo model,
each taste with headroom: win >= 0.70 greedy for every stage, accuracy within 5 points of the base, last vote
to live candidate <= 120 s; a real model: win >= 0.65 greedy with DPO and SFT, replay accuracy within 5
points, perplexity within 10%, no empty answers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.common import add_model_arguments, prepare
from bench.loop_prompts import real_prompts
from bench.loop_reasons import Agreement, Movement, liked_share, missed_reason, reward_model_agreement
from bench.loop_tastes import DEMO_TASTES, REAL_TASTES, Taste
from hub.ui.train import default_params
from tests.support.server import HubProcess
from training.demo.corpus import CheckablePrompt, checkable_prompts, is_correct
from training.replay_sets import DEMO_FAMILIES

BASE = "base"  # the base model's served name
STAGES = ("dpo", "sft", "ppo")
# the UI's default sampling (hub/ui/chat.py, arena.py, rank.py)
CHAT = {"temperature": 0.7, "top_p": 1.0}
ARENA = {"temperature": 0.7}
RANK = {"temperature": 1.0}
RANK_SIZE = 4
HEADROOM_SAMPLES = 4
MIN_HEADROOM = 0.30
TARGETS = {"demo": 0.70, "real": 0.65}
TARGET_ACCURACY_DROP = 0.05
TARGET_PERPLEXITY_RISE = 0.10
TARGET_LATENCY_S = 120.0
RUN_FILE = "run.json"  # the flags a run was made with, in its data folder (bench/retrain.py reads them)


@dataclass
class Setup:
    """What differs between the demo model and a real one: prompts, tastes, answer length, target."""

    kind: str  # "demo" or "real"
    vote_prompts: list[CheckablePrompt]
    judge_prompts: list[CheckablePrompt]
    tastes: dict[str, Taste]
    max_tokens: int
    # the families whose accuracy is the guardrail (the demo model's replay families: its arithmetic, near
    # 0.3, flips with any change and cannot show a loss); None: every checkable prompt
    guarded: tuple[str, ...] | None = None


def setup_for(model_dir: Path, args: argparse.Namespace) -> Setup:
    demo = (Path(model_dir) / "tunehub_demo.json").exists()
    if demo:
        votes = checkable_prompts(args.votes or (24 if args.quick else 150), seed=args.seed, split="train")
        judged = checkable_prompts(args.judge or (12 if args.quick else 100), seed=args.seed + 1)
        return Setup("demo", votes, judged, DEMO_TASTES, args.max_tokens or 32, DEMO_FAMILIES)
    votes, judged = real_prompts(args.seed)
    return Setup(
        "real",
        votes[: args.votes or (12 if args.quick else len(votes))],
        judged[: args.judge or (6 if args.quick else len(judged))],
        REAL_TASTES,
        args.max_tokens or 96,
    )


# -- talking to the hub ---------------------------------------------------------------------------------


def ask(http: httpx.Client, model: str, prompt: CheckablePrompt, n: int, sampling: dict, max_tokens: int):
    body = {"model": model, "messages": prompt.messages, "n": n, "max_tokens": max_tokens, **sampling}
    response = http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    completion = response.json()
    return completion["id"], [choice["message"]["content"] or "" for choice in completion["choices"]]


def vote(
    http: httpx.Client, taste: Taste, prompt: CheckablePrompt, kind: str, max_tokens: int
) -> tuple[str, list[bool]]:
    """Cast one vote of `kind` on answers sampled at the UI's settings; returns what it was and, for each
    answer an SFT job will train on (thumbs up, a pairwise winner, a ranking's best), whether the rater likes
    it on its own."""
    if kind == "thumbs":
        gid, (answer,) = ask(http, BASE, prompt, 1, CHAT, max_tokens)
        liked = taste.likes(prompt, answer)
        body = {
            "type": "thumbs",
            "generation": {"generation_id": gid, "choice": 0},
            "value": "up" if liked else "down",
        }
        result, trained = ("up" if liked else "down"), [liked] if liked else []
    elif kind == "pairwise":
        gid, answers = ask(http, BASE, prompt, 2, ARENA, max_tokens)
        winner = taste.arena_vote(prompt, *answers)
        ref = lambda i: {"generation_id": gid, "choice": i}  # noqa: E731
        body = {"type": "pairwise", "a": ref(0), "b": ref(1), "winner": winner}
        decided = winner in ("a", "b")
        result = "pair" if decided else winner
        trained = [taste.likes(prompt, answers[0 if winner == "a" else 1])] if decided else []
    else:
        gid, answers = ask(http, BASE, prompt, RANK_SIZE, RANK, max_tokens)
        scores = [taste.score(prompt, a) for a in answers]
        groups: dict[tuple, list[int]] = {}
        for i, score in enumerate(scores):
            groups.setdefault(score, []).append(i)
        ref = lambda i: {"generation_id": gid, "choice": i}  # noqa: E731
        order = [
            [ref(i) for i in groups[s]] if len(groups[s]) > 1 else ref(groups[s][0])
            for s in sorted(groups, reverse=True)
        ]
        if len(order) == 1:  # all tied: a person would not submit this ranking
            return "tie", []
        body = {"type": "ranking", "order": order}
        result = "ranking"
        trained = [taste.likes(prompt, answers[i]) for i in groups[max(groups)]]
    http.post("/v1/feedback", json=body).raise_for_status()
    return result, trained


def vote_kind(i: int) -> str:
    """Half pairwise, three in ten thumbs, two in ten rankings, interleaved."""
    return ("pairwise", "thumbs", "pairwise", "ranking", "pairwise", "thumbs", "pairwise", "thumbs",
            "pairwise", "ranking")[i % 10]  # fmt: skip


def run_job(http: httpx.Client, body: dict, timeout: float, probe: CheckablePrompt | None, max_tokens: int):
    """Post a job and wait until it ends; returns its last state and when the candidate first answered."""
    response = http.post("/v1/jobs", json=body)
    if response.status_code >= 400:
        raise RuntimeError(f"POST /v1/jobs {response.status_code}: {response.text[:300]}")
    job = response.json()
    live_at = None
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job['id']} still {job['status']} after {timeout:.0f} s")
        if probe is not None and live_at is None and job["adapter"]:
            wait_answering(http, job["adapter"], probe, max_tokens)
            live_at = time.monotonic()
        time.sleep(0.2)
        job = http.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ({body['stage']}) {job['status']}: {job['error']}")
    if probe is not None and live_at is None:
        wait_answering(http, job["adapter"], probe, max_tokens)
        live_at = time.monotonic()
    return job, live_at


def wait_answering(http: httpx.Client, model: str, prompt: CheckablePrompt, max_tokens: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            ask(http, model, prompt, 1, {"temperature": 0.0}, max_tokens)
            return
        except httpx.HTTPStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- one taste ------------------------------------------------------------------------------------------


@dataclass
class StageResult:
    taste: str
    stage: str
    headroom: float = 0.0
    rows: int | None = None
    chosen: str = ""
    steps: str = ""
    kl: float | None = None
    train_seconds: float = 0.0
    latency_s: float = 0.0
    win_greedy: float = 0.0
    win_sampled: float = 0.0
    base_accuracy: float = 0.0  # on the guarded families
    candidate_accuracy: float = 0.0
    all_accuracy: tuple[float, float] = (0.0, 0.0)  # base, candidate on every checkable prompt (shown)
    replay_accuracy: tuple[float | None, float | None] = (None, None)  # base/promoted, candidate
    perplexity: tuple[float | None, float | None] = (None, None)
    empty: int = 0
    heldout_accuracy: float | None = None
    reward_agreement: Agreement | None = None  # ppo: its reward model against the rater on the judged answers
    movement: Movement | None = None  # how far the job's run went (kept step, early stop, KL)
    error: str | None = None


@dataclass
class TasteRun:
    taste: str
    headroom: float = 0.0
    votes: dict[str, int] = field(default_factory=dict)
    sft_liked: float = 0.0  # share of the answers an SFT job trains on that the rater likes on their own
    base_liked: float = 0.0  # the same share of the base's own samples (the headroom's, Chat tab sampling)
    stages: list[StageResult] = field(default_factory=list)


def headroom(
    http, taste: Taste, prompts: list[CheckablePrompt], max_tokens: int
) -> tuple[float, list[str], float]:
    """(share of prompts where a sampled answer beats the greedy one for the rater, the greedy answers, share of
    the samples the rater likes on their own)."""

    def one(prompt: CheckablePrompt) -> tuple[bool, str, float]:
        _, (greedy,) = ask(http, BASE, prompt, 1, {"temperature": 0.0}, max_tokens)
        _, samples = ask(http, BASE, prompt, HEADROOM_SAMPLES, CHAT, max_tokens)
        best = max(taste.score(prompt, s) for s in samples)
        return (
            best > taste.score(prompt, greedy),
            greedy,
            liked_share(taste, [prompt] * len(samples), samples),
        )

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, prompts))
    return (
        sum(r for r, _, _ in results) / len(prompts),
        [g for _, g, _ in results],
        sum(liked for _, _, liked in results) / len(prompts),
    )


def blind_win(taste: Taste, prompts, base: list[str], candidate: list[str], seed: int) -> float:
    rng = random.Random(seed)
    points = 0.0
    for prompt, b, c in zip(prompts, base, candidate, strict=True):
        flipped = rng.random() < 0.5  # blind: the rater does not know which side is the candidate
        verdict = taste.judge(prompt, b, c) if flipped else taste.judge(prompt, c, b)
        points += 1.0 if verdict == ("b" if flipped else "a") else 0.5 if verdict == "tie" else 0.0
    return points / len(prompts)


def answers(http, model: str, prompts, sampling: dict, max_tokens: int) -> list[str]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: ask(http, model, p, 1, sampling, max_tokens)[1][0], prompts))


def accuracy(
    prompts: list[CheckablePrompt], texts: list[str], families: tuple[str, ...] | None = None
) -> float:
    checkable = [
        (p, t) for p, t in zip(prompts, texts) if p.answer and (families is None or p.family in families)
    ]
    return sum(is_correct(p, t) for p, t in checkable) / len(checkable) if checkable else float("nan")


def run_taste(model_dir: Path, work: Path, setup: Setup, taste: Taste, stages, args) -> TasteRun:
    run = TasteRun(taste.name)
    with (
        HubProcess(
            model=model_dir, data_dir=work / taste.name, extra_args=["--served-model-name", BASE]
        ) as hub,
        httpx.Client(base_url=hub.url, timeout=600) as http,
    ):
        run.headroom, base_greedy, run.base_liked = headroom(
            http, taste, setup.judge_prompts, setup.max_tokens
        )
        if run.headroom < MIN_HEADROOM and not args.train_without_headroom:
            return run  # the base already answers this way: nothing to vote on or train
        base_sampled = answers(http, BASE, setup.judge_prompts, CHAT, setup.max_tokens)
        kinds = [vote_kind(i) for i in range(len(setup.vote_prompts))]
        with ThreadPoolExecutor(4) as pool:
            cast = list(
                pool.map(
                    lambda pk: vote(http, taste, pk[0], pk[1], setup.max_tokens),
                    zip(setup.vote_prompts, kinds),
                )
            )
        for kind, _ in cast:
            run.votes[kind] = run.votes.get(kind, 0) + 1
        trained = [liked for _, answers_ in cast for liked in answers_]
        run.sft_liked = sum(trained) / len(trained) if trained else 0.0
        last_vote = time.monotonic()
        for stage in stages:
            result = StageResult(taste.name, stage, run.headroom)
            run.stages.append(result)
            try:
                if stage == "ppo":
                    reward, _ = run_job(
                        http, job_body("reward", f"rm-{taste.name}", args), args.job_timeout, None, 0
                    )
                    result.train_seconds = (reward["metrics"] or {}).get("train_seconds") or 0.0
                    last_vote = time.monotonic()  # the candidate's clock starts with its own job
                body = job_body(stage, f"{stage}-{taste.name}", args)
                job, live_at = run_job(http, body, args.job_timeout, setup.judge_prompts[0], setup.max_tokens)
                result.latency_s = live_at - last_vote
                read_job(result, job)
                candidate = job["adapter"]
                greedy = answers(http, candidate, setup.judge_prompts, {"temperature": 0.0}, setup.max_tokens)
                sampled = answers(http, candidate, setup.judge_prompts, CHAT, setup.max_tokens)
                result.win_greedy = blind_win(taste, setup.judge_prompts, base_greedy, greedy, args.seed)
                result.win_sampled = blind_win(
                    taste, setup.judge_prompts, base_sampled, sampled, args.seed + 1
                )
                result.base_accuracy = accuracy(setup.judge_prompts, base_greedy, setup.guarded)
                result.candidate_accuracy = accuracy(setup.judge_prompts, greedy, setup.guarded)
                result.all_accuracy = (
                    accuracy(setup.judge_prompts, base_greedy),
                    accuracy(setup.judge_prompts, greedy),
                )
                result.empty = sum(not g.strip() for g in greedy)
                if stage == "ppo":
                    result.reward_agreement = reward_model_agreement(
                        (job.get("params") or {}).get("reward_model"),
                        taste,
                        setup.judge_prompts,
                        (base_greedy, greedy),
                        (base_sampled, sampled),
                    )
            except (RuntimeError, TimeoutError, httpx.HTTPError) as e:
                result.error = str(e)[:300]
            last_vote = time.monotonic()
    return run


def job_body(stage: str, name: str, args: argparse.Namespace) -> dict:
    params = default_params(stage)
    if args.max_steps:
        params["max_steps"] = args.max_steps
    return {"stage": stage, "name": name, "data": "feedback", "params": params}


def read_job(result: StageResult, job: dict) -> None:
    metrics = job["metrics"] or {}
    result.train_seconds += metrics.get("train_seconds") or 0.0
    result.steps = f"{metrics.get('steps')}/{metrics.get('max_steps')}"
    chosen = metrics.get("chosen_settings") or {}
    result.chosen = ", ".join(f"{k.replace('learning_rate', 'lr')}={v['value']}" for k, v in chosen.items())
    result.heldout_accuracy = metrics.get("eval_rewards/accuracies")
    result.rows = (job.get("params") or {}).get("rows") or metrics.get("train_rows")
    replay = metrics.get("replay") or {}
    cand, inc = replay.get("candidate") or {}, replay.get("incumbent") or {}
    result.kl = cand.get("kl")
    result.replay_accuracy = (inc.get("accuracy"), cand.get("accuracy"))
    result.perplexity = (inc.get("perplexity"), cand.get("perplexity"))
    result.movement = Movement.of(metrics)


# -- the report -----------------------------------------------------------------------------------------


def meets(setup: Setup, r: StageResult) -> bool:
    if r.error:
        return False
    ok = r.win_greedy >= TARGETS[setup.kind]
    if setup.kind == "demo":
        return (
            ok
            and r.candidate_accuracy >= r.base_accuracy - TARGET_ACCURACY_DROP
            and r.latency_s <= TARGET_LATENCY_S
        )
    base_acc, cand_acc = r.replay_accuracy
    if base_acc is not None and cand_acc is not None:
        ok = ok and cand_acc >= base_acc - TARGET_ACCURACY_DROP
    base_ppl, cand_ppl = r.perplexity
    if base_ppl and cand_ppl:
        ok = ok and cand_ppl <= base_ppl * (1 + TARGET_PERPLEXITY_RISE)
    return ok and r.empty == 0


def _f(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def print_report(setup: Setup, runs: list[TasteRun], header: str) -> None:
    print(f"\n{header}\n")
    print(
        f"{'taste':<18} {'stage':<5} | {'headroom':>8} | {'steps':>7} {'train s':>7} {'vote->live':>10} | "
        f"{'KL':>5} {'heldout':>7} | {'win greedy':>10} {'win sampled':>11} | {'acc base':>8} {'acc cand':>8} | "
        f"{'replay acc':>11} {'ppl':>13} {'empty':>5} | target"
    )
    for run in runs:
        if not run.stages:
            print(
                f"{run.taste:<18} {'*':<5} | {run.headroom:>8.0%} | no headroom (<{MIN_HEADROOM:.0%}): the base "
                "already answers this way, cannot be won; not trained (--train-without-headroom trains it)"
            )
        for r in run.stages:
            if r.error:
                print(f"{r.taste:<18} {r.stage:<5} | {r.headroom:>8.0%} | failed: {r.error}")
                continue
            if r.headroom < MIN_HEADROOM:
                verdict = f"no headroom (<{MIN_HEADROOM:.0%}): cannot be won"
            else:
                verdict = "met" if meets(setup, r) else "not met"
            print(
                f"{r.taste:<18} {r.stage:<5} | {r.headroom:>8.0%} | {r.steps:>7} {r.train_seconds:>7.1f} "
                f"{r.latency_s:>10.1f} | {_f(r.kl):>5} {_f(r.heldout_accuracy):>7} | {r.win_greedy:>10.2f} "
                f"{r.win_sampled:>11.2f} | {_f(r.base_accuracy):>8} {_f(r.candidate_accuracy):>8} | "
                f"{_f(r.replay_accuracy[0])}->{_f(r.replay_accuracy[1]):<5} "
                f"{_f(r.perplexity[0], '.1f')}->{_f(r.perplexity[1], '.1f'):<6} {r.empty:>5} | {verdict}"
            )
    print()
    for run in runs:
        if not run.votes:
            print(
                f"  {run.taste}: prefers {setup.tastes[run.taste].description}; not voted on; the base's "
                f"samples it likes on their own: {run.base_liked:.0%}"
            )
            continue
        votes = ", ".join(f"{n} {k}" for k, n in sorted(run.votes.items()))
        chosen = "; ".join(f"{r.stage}: {r.chosen}" for r in run.stages if r.chosen)
        print(
            f"  {run.taste}: prefers {setup.tastes[run.taste].description}; votes {votes}; "
            f"{run.sft_liked:.0%} of the answers sft trains on are ones the rater likes on their own (of the "
            f"base's samples {run.base_liked:.0%}); chosen {chosen}"
        )
        for r in (r for r in run.stages if not r.error):
            print(
                f"    {r.stage}: accuracy on every family {_f(r.all_accuracy[0])} -> {_f(r.all_accuracy[1])}"
            )
            reason = missed_reason(
                r.stage,
                sft_liked=run.sft_liked,
                base_liked=run.base_liked,
                agreement=r.reward_agreement,
                movement=r.movement,
            )
            if reason and r.headroom >= MIN_HEADROOM and not meets(setup, r):
                print(f"    {r.stage} not met, measured: {reason}")
    target = TARGETS[setup.kind]
    extra = (
        f"accuracy ({', '.join(setup.guarded or ('every family',))}) within {TARGET_ACCURACY_DROP * 100:.0f} "
        f"points, last vote -> live <= {TARGET_LATENCY_S:.0f} s"
        if setup.kind == "demo"
        else f"replay accuracy within {TARGET_ACCURACY_DROP * 100:.0f} points, perplexity within "
        f"{TARGET_PERPLEXITY_RISE:.0%}, no empty answers"
    )
    print(
        f"target: win >= {target:.2f} greedy, {extra}; tastes with headroom under {MIN_HEADROOM:.0%} are not counted"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--quick", action="store_true", help="a few votes and prompts, dpo only: proves it runs"
    )
    parser.add_argument(
        "--tastes", default=None, help="comma-separated (default: every taste of the model kind)"
    )
    parser.add_argument("--stages", default=None, help=f"comma-separated, of: {', '.join(STAGES)}")
    parser.add_argument(
        "--votes", type=int, default=None, help="votes per taste (demo 150, real: all its prompts)"
    )
    parser.add_argument("--judge", type=int, default=None, help="held-out prompts judged (demo 100)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap each job's steps (printed; 2-core budget)"
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="answer length (demo 32, real 96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-without-headroom",
        action="store_true",
        help=f"vote and train even for a taste whose headroom is under {MIN_HEADROOM:.0%}%",
    )
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="seconds a job may take")
    args = parser.parse_args(argv)
    model_dir = prepare(args)
    setup = setup_for(model_dir, args)
    tastes = (args.tastes or ",".join(list(setup.tastes)[: 1 if args.quick else None])).split(",")
    stages = (args.stages or ("dpo" if args.quick else ",".join(STAGES))).split(",")
    unknown = [t for t in tastes if t not in setup.tastes] + [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown taste or stage for a {setup.kind} model: {', '.join(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-loop-"))
    flags = ("votes", "judge", "quick", "seed", "max_tokens", "max_steps")
    (work / RUN_FILE).write_text(json.dumps({"model": str(model_dir)} | {k: getattr(args, k) for k in flags}))
    runs = []
    for name in tastes:
        started = time.perf_counter()
        run = run_taste(model_dir, work, setup, setup.tastes[name], stages, args)
        runs.append(run)
        for r in run.stages:
            print(
                f"[{name}/{r.stage}] headroom {r.headroom:.0%}, win {r.win_greedy:.2f} greedy "
                f"{r.win_sampled:.2f} sampled, accuracy {_f(r.base_accuracy)} -> {_f(r.candidate_accuracy)}"
                f" (every family: {_f(r.all_accuracy[0])} -> {_f(r.all_accuracy[1])})"
                + (f", failed: {r.error}" if r.error else ""),
                flush=True,
            )
        print(f"[{name}] {time.perf_counter() - started:.0f} s", flush=True)
    cap = f", steps capped at {args.max_steps} (2-core budget)" if args.max_steps else ""
    print_report(
        setup,
        runs,
        f"tunehub loop benchmark ({os.cpu_count()} CPUs, {setup.kind} model {model_dir.name}): "
        f"{len(setup.vote_prompts)} votes per taste, {len(setup.judge_prompts)} held-out prompts, answers up to "
        f"{setup.max_tokens} tokens, the Train tab's default job body{cap}; data in {work}",
    )
    (work / "results.json").write_text(json.dumps([asdict(r) for r in runs], indent=1, default=str))
    return 0 if all(r.error is None for run in runs for r in run.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
