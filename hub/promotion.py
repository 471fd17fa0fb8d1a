"""Promotion of candidate adapters: the evidence rule over the arena's votes, the regression replay and its
guard, automatic promotion, and the default model name that serves whatever is promoted.

    promotion = PromotionService(store, adapters, feedback, data_dir, PromotionRule.from_env())
    promotion.replay("km@2")           # blocking (seconds): answers, accuracy, KL, flips; stored as JSON
    promotion.decision("km@2")         # Decision: promote / not_yet / refuse, with reasons
    promotion.guard(adapter)           # raises Conflict naming why a manual promotion is refused
    promotion.auto_promote()           # promote every candidate the rule accepts (when rule.auto)
    promotion.default_adapter()        # the served name `tunehub-default` routes to (None: the base)

Replay reports live in ``DATA_DIR/replay/NAME-vN.json``. Every method blocks: async callers use a thread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from feedback.errors import Conflict, NotFound
from feedback.promotion_rule import Decision, PromotionRule, decide, guard_reasons
from feedback.records import Adapter
from training.jobs.publish import newest_reward_model

from .adapters_service import AdapterService
from .feedback_service import FeedbackService
from .service import DEFAULT_MODEL  # noqa: F401  (re-exported: the name the API and Chat tab use)

log = logging.getLogger("tunehub.promotion")


class PromotionService:
    def __init__(
        self,
        store,
        adapters: AdapterService,
        feedback: FeedbackService,
        data_dir: Path,
        rule: PromotionRule | None = None,
        *,
        replay_prompts: str | Path | None = None,
    ) -> None:
        self.store = store
        self.adapters = adapters
        self.feedback = feedback
        self.data_dir = Path(data_dir)
        self.rule = rule or PromotionRule()
        # a JSONL prompt set for the replay; None: the demo corpus's held-out checkable prompts
        self.replay_prompts = replay_prompts or os.environ.get("TUNEHUB_REPLAY_PROMPTS") or None

    # ----- who is promoted ---------------------------------------------------------------------------

    def promoted(self) -> Adapter | None:
        return self.store.promoted_adapter()

    def incumbent_name(self) -> str:
        """The promoted adapter's name on the leaderboard (its served name), else the base model's."""
        promoted = self.promoted()
        if promoted is not None:
            served = self.adapters.row(promoted.ref).served
            if served is not None:
                return served
        return self.feedback.anchor() or "base"

    def default_adapter(self) -> str | None:
        """The engine adapter `tunehub-default` routes to: the promoted one if the engine serves it."""
        promoted = self.promoted()
        if promoted is None:
            return None
        return self.adapters.served_names().get(str(Path(promoted.path).resolve()))

    # ----- the replay --------------------------------------------------------------------------------

    def replay_path(self, adapter: Adapter) -> Path:
        return self.data_dir / "replay" / f"{adapter.name}-v{adapter.version}.json"

    def report(self, ref: str) -> dict[str, Any] | None:
        """The stored replay report of ``ref`` with its per-prompt flip report, or None when it was never
        replayed (a report stored before flips were kept gets them computed from its rows)."""
        path = self.replay_path(self.adapters.get(ref))
        if not path.is_file():
            return None
        report = json.loads(path.read_text())
        if "flips" not in report:
            from training.replay_flips import flip_report

            report["flips"] = flip_report(report)
        return report

    def reward_model(self) -> Adapter | None:
        """The newest registered reward model that is not retired, if any (the one triggered PPO uses too)."""
        return newest_reward_model(self.store)

    def replay(self, ref: str) -> dict[str, Any]:
        """Answer the replay set with ``ref`` and with the promoted model (or the base); store and return
        the report. Blocking: seconds on the demo model, more on a real one."""
        from training.replay import load_prompts, run_replay

        adapter = self.adapters.get(ref)
        if not Path(adapter.path).is_dir():
            raise NotFound(f"{adapter.ref}'s directory {adapter.path!r} is gone", param="adapter")
        promoted = self.promoted()
        if promoted is not None and (promoted.id == adapter.id or not Path(promoted.path).is_dir()):
            promoted = None  # replayed against the base
        reward = self.reward_model()
        report = run_replay(
            adapter.base,
            adapter.path,
            promoted.path if promoted else None,
            prompts=load_prompts(self.replay_prompts),
            candidate_name=adapter.ref,
            incumbent_name=promoted.ref if promoted else "base",
            reward_model=reward.path if reward else None,
        )
        report["adapter"] = adapter.ref
        report["against"] = promoted.ref if promoted else "base"
        path = self.replay_path(adapter)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside and renamed, so a half-written report is never read (one temp name per replay:
        # two replays of one adapter at once must not share it)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(json.dumps(report, ensure_ascii=False, indent=1))
        Path(tmp.name).replace(path)
        return report

    def current_report(self, adapter: Adapter) -> dict[str, Any]:
        """The stored report if it was made against the model promoted now, else a fresh replay."""
        promoted = self.promoted()
        against = promoted.ref if promoted is not None and promoted.id != adapter.id else "base"
        report = self.report(adapter.ref)
        if report is None or report.get("against") != against:
            report = self.replay(adapter.ref)
        return report

    # ----- decisions ---------------------------------------------------------------------------------

    def decision(self, ref: str, *, replay: bool = True) -> Decision:
        """What the rule says about ``ref`` against the promoted model (the base when none): the guard over
        its replay first (replayed now unless one against the current incumbent is stored; ``replay=False``
        uses only a stored one), then the votes."""
        adapter = self.adapters.get(ref)
        row = self.adapters.row(ref)
        report = self.current_report(adapter) if replay else self.report(ref)
        comparisons = self.store.pairwise_comparisons()
        board = self.feedback.leaderboard()
        return decide(
            self.rule,
            board,
            comparisons,
            candidate=row.served or adapter.ref,
            incumbent=self.incumbent_name(),
            replay=report,
        )

    def guard(self, adapter: Adapter) -> None:
        """Raise Conflict naming why ``adapter`` may not be promoted (accuracy drop, KL); nothing if it may.
        Manual promotions go through this too; an admin's override skips it."""
        promoted = self.promoted()
        if promoted is not None and promoted.id == adapter.id:
            return
        if not Path(adapter.path).is_dir() or not self.adapters.row(adapter.ref).chat_adapter:
            # nothing to replay: a reward model scores rather than answers; a missing directory serves nothing
            log.warning("%s promoted without a replay: it is not a chat adapter on disk", adapter.ref)
            return
        report = self.current_report(adapter)
        reasons = guard_reasons(self.rule, report.get("candidate"), report.get("incumbent"))
        if reasons:
            raise Conflict(
                f"{adapter.ref} is not promoted: {'; '.join(reasons)}. Look at its replay in the Adapters tab; "
                "an admin may promote it anyway with override",
                param="adapter",
            )

    def auto_promote(self) -> list[Decision]:
        """Check every served candidate against the rule and promote those it accepts (the best-rated first;
        only one per call, since the next is then judged against it). Returns the decisions made."""
        decisions = []
        for row in self.adapters.rows():
            if row.adapter.status != "candidate" or row.served is None or not row.chat_adapter:
                continue
            try:
                decision = self.decision(row.ref)
            except Exception as e:  # one broken candidate must not stop the others
                log.warning("no promotion decision for %s: %s", row.ref, e)
                continue
            decisions.append(decision)
            if decision.promote and self.rule.auto:
                self.store.promote_adapter(row.adapter.name, row.adapter.version)
                log.info("promoted %s automatically: %s", row.ref, "; ".join(decision.reasons))
                break
        return decisions


async def run_auto_promotion(promotion: PromotionService, interval_s: float | None = None) -> None:
    """Check the candidates every ``interval_s`` (TUNEHUB_AUTO_PROMOTE_INTERVAL, default 60 s) in a worker
    thread, promoting those the rule accepts; runs until cancelled (the hub's lifespan does that)."""
    import asyncio

    interval = interval_s or float(os.environ.get("TUNEHUB_AUTO_PROMOTE_INTERVAL") or 60)
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(promotion.auto_promote)
        except Exception as e:  # the next round tries again; the hub keeps serving
            log.warning("automatic promotion check failed: %s", e)
