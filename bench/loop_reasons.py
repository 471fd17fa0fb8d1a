"""Why a stage of the loop benchmark missed its target, measured on the run's own answers and votes.

- SFT imitates the answers that won the votes. It can only move the base as far as those answers differ from
  the base's own: `liked_share` of the imitated answers against the same share of the base's samples; and
  only as far as its run went (`Movement`, as for DPO: a real model's run stops at the perplexity bound).
- DPO moves the policy only as far as its run went: `Movement` says which step's weights it kept, whether early
  stopping or a drift bound (KL, the held-out text's perplexity) ended it, how far the candidate moved from
  the base (KL on the replay prompts) and how often it orders the held-out votes as the rater did.
- PPO climbs its reward model. Where the model does not see what the rater requires first (the demo model's
  correctness), the policy drifts there while it learns the style: `reward_agreement` says how often the
  reward model ranks the judged answer pairs as the rater does, apart for pairs where one answer fails the
  rater's first requirement and pairs the style decides.

    agreement = reward_agreement(scorer, taste, prompts, base_answers, candidate_answers)
    print(missed_reason("ppo", sft_liked=0.4, base_liked=0.35, agreement=agreement))
    print(missed_reason("dpo", sft_liked=0.4, base_liked=0.35, movement=Movement.of(job["metrics"])))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.loop_tastes import Taste
from training.demo.corpus import CheckablePrompt

# scorer(prompts=[messages], completions=[[assistant message]]) -> scores, as training.rewards.RewardModelScorer
Scorer = Callable[..., list[float]]


@dataclass(frozen=True)
class Agreement:
    """How often a reward model orders answer pairs as the rater does (ties of the reward model count half)."""

    first: float | None  # pairs where exactly one answer meets the rater's first requirement
    first_pairs: int
    style: float | None  # pairs both answers meet (or fail) it alike, the rater's style deciding
    style_pairs: int

    def describe(self) -> str:
        def part(share: float | None, pairs: int, what: str) -> str:
            return f"{'-' if share is None else f'{share:.0%}'} of {pairs} pairs {what}"

        first = part(self.first, self.first_pairs, "where one answer fails the rater's first requirement")
        return f"{first}, {part(self.style, self.style_pairs, 'the style decides')}"


# below this KL (nats a token, on the replay prompts) a candidate has hardly left the base
BARELY_MOVED_KL = 0.05


@dataclass(frozen=True)
class Movement:
    """How far a preference job's run went, from its metrics."""

    kept_step: int | None  # the step whose weights it ended on
    steps: int | None  # steps it ran
    max_steps: int | None
    stopped_early: bool
    stopped_on_kl: bool  # early, at the job's KL bound rather than on the held-out loss
    stopped_on_perplexity: bool  # early, at the job's bound on the held-out text's perplexity
    kl: float | None  # the candidate's KL from the base on the replay prompts
    heldout_accuracy: float | None  # share of held-out votes it orders as the rater did

    @classmethod
    def of(cls, metrics: dict) -> Movement:
        replay = (metrics.get("replay") or {}).get("candidate") or {}
        return cls(
            metrics.get("kept_step", metrics.get("best_step")),
            metrics.get("steps"),
            metrics.get("max_steps"),
            bool(metrics.get("stopped_early")),
            metrics.get("stopped_on_kl") is not None,
            metrics.get("stopped_on_perplexity") is not None,
            replay.get("kl"),
            metrics.get("eval_rewards/accuracies"),
        )

    def describe(self) -> str:
        run = f"ran {self.steps} of {self.max_steps} steps"
        if self.stopped_on_kl:
            run += " (stopped at the job's KL bound from the base)"
        elif self.stopped_on_perplexity:
            run += " (stopped at the job's bound on the held-out text's perplexity)"
        elif self.stopped_early:
            run += " (early stopping: the held-out loss had stopped improving)"
        kept = (
            f" and kept step {self.kept_step}'s weights" if self.kept_step not in (None, self.steps) else ""
        )
        parts = [run + kept]
        if self.kl is not None:
            parts.append(
                f"the candidate's KL from the base is {self.kl:.2f} nats a token"
                + (" (it hardly left the base)" if self.kl < BARELY_MOVED_KL else "")
            )
        if self.heldout_accuracy is not None:
            parts.append(f"it orders {self.heldout_accuracy:.0%} of the held-out votes as the rater did")
        return "; ".join(parts)


def liked_share(taste: Taste, prompts: Sequence[CheckablePrompt], answers: Sequence[str]) -> float:
    """Share of `answers` (one per prompt) the rater likes on their own."""
    if not answers:
        return 0.0
    return sum(taste.likes(p, a) for p, a in zip(prompts, answers, strict=True)) / len(answers)


def reward_agreement(
    scorer: Scorer,
    taste: Taste,
    prompts: Sequence[CheckablePrompt],
    first: Sequence[str],
    second: Sequence[str],
) -> Agreement:
    """Score each prompt's two answers with `scorer` and compare its order with the rater's, over the pairs the
    rater does not call a tie."""
    pairs = [
        (p, a, b, verdict)
        for p, a, b in zip(prompts, first, second, strict=True)
        if (verdict := taste.judge(p, a, b)) != "tie"
    ]
    if not pairs:
        return Agreement(None, 0, None, 0)
    scores = scorer(
        prompts=[p.messages for p, *_ in pairs for _ in range(2)],
        completions=[[{"role": "assistant", "content": text}] for _, a, b, _ in pairs for text in (a, b)],
    )
    points: dict[bool, list[float]] = {True: [], False: []}
    for i, (p, a, b, verdict) in enumerate(pairs):
        sa, sb = scores[2 * i], scores[2 * i + 1]
        model = "a" if sa > sb else "b" if sb > sa else "tie"
        decided_first = taste.score(p, a)[0] != taste.score(p, b)[0]
        points[decided_first].append(1.0 if model == verdict else 0.5 if model == "tie" else 0.0)

    def share(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return Agreement(share(points[True]), len(points[True]), share(points[False]), len(points[False]))


def reward_model_agreement(
    reward_model: str | None,
    taste: Taste,
    prompts: Sequence[CheckablePrompt],
    *answer_pairs: tuple[Sequence[str], Sequence[str]],
) -> Agreement | None:
    """`reward_agreement` of the reward model directory a ppo job trained against (loaded here, on the CPU),
    over each (first answers, second answers) pair of lists for `prompts`; None without one, or when it cannot
    be loaded (said so: the check explains a miss, the run's own figures stand)."""
    from feedback.errors import Invalid
    from training.rewards import RewardModelScorer

    if not reward_model:
        return None
    try:
        scorer = RewardModelScorer.load(reward_model)
    except (Invalid, OSError, ValueError, RuntimeError) as exc:
        print(f"[{taste.name}/ppo] reward model {reward_model} not checked: {exc}", flush=True)
        return None
    first = [a for answers, _ in answer_pairs for a in answers]
    second = [b for _, answers in answer_pairs for b in answers]
    return reward_agreement(scorer, taste, list(prompts) * len(answer_pairs), first, second)


def missed_reason(
    stage: str,
    *,
    sft_liked: float,
    base_liked: float,
    agreement: Agreement | None = None,
    movement: Movement | None = None,
) -> str | None:
    """What the run measured that explains a missed target of `stage`, or None where nothing is measured."""
    if stage == "sft":
        reason = (
            f"sft imitates the answers that won: {sft_liked:.0%} of them are ones the rater likes on their own, "
            f"against {base_liked:.0%} of the base's own samples"
        )
        return reason if movement is None else f"{reason}; it {movement.describe()}"
    if stage == "ppo" and agreement is not None:
        return f"ppo's reward model orders the judged answers as the rater does on {agreement.describe()}"
    if stage == "dpo" and movement is not None:
        return f"dpo {movement.describe()}"
    return None
