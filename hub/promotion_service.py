"""Promotion of candidate adapters: the evidence rule over the arena's votes, the regression replay and its
guard, automatic promotion, and the default model name that serves whatever is promoted.

    promotion = PromotionService(store, adapters, feedback, data_dir, PromotionRule(kind="win_rate"))
    promotion.replay("km@2")           # blocking (seconds): answers, accuracy, KL, flips; stored as JSON
    promotion.decision("km@2")         # Decision: promote / not_yet / refuse, with reasons
    promotion.guard(adapter)           # raises Conflict naming why a manual promotion is refused
    promotion.promote("km@2")          # the guard, then the promotion (override=True skips the guard)
    promotion.auto_promote()           # promote every candidate the rule accepts (when rule.auto)
    promoted_route(store, engine)()    # the served name `tunehub-default` routes to (None: the base)
    promotion.history()                # each promotion over time with its rating and replay accuracy

Replay reports live in ``DATA_DIR/replay/NAME-vN.json``. Every method blocks: async callers use a thread.
In the hub the replay runs on the serving engine (`attach_engine`: batched answers and scoring under the
adapters' served names); without one (the CLI) it starts a local engine of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedback.errors import Conflict, NotFound
from feedback.promotion_rule import Decision, PromotionRule, decide, guard_reasons
from feedback.records import Adapter
from training.jobs.publish import newest_reward_model, served_name
from training.replay_flips import flip_report

from .adapters_service import AdapterService
from .chat_service import DEFAULT_MODEL  # noqa: F401  (re-exported: the name the API and Chat tab use)
from .feedback_service import FeedbackService

log = logging.getLogger("tunehub.promotion")


def promoted_route(store, engine) -> Callable[[], str | None]:
    """What `tunehub-default` names, asked at each request: the served name of the promoted version if the
    engine serves it (None: the base). Needs only the store and the engine, so the chat service is built
    with it."""

    def route() -> str | None:
        promoted = store.promoted_adapter()
        if promoted is None or engine is None:
            return None
        path = str(Path(promoted.path).resolve())
        return next((a.name for a in engine.adapters() if str(Path(a.path).resolve()) == path), None)

    return route


REPLAY_TIMEOUT_S = 1800.0  # a replay on a real model on CPU takes minutes


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
        # a JSONL prompt set for the replay; None: the set chosen for the base (training.replay_sets)
        self.replay_prompts = replay_prompts or None
        self.engine = None  # the serving engine the replay runs on (`attach_engine`); None: one of its own
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach_engine(self, engine, loop: asyncio.AbstractEventLoop) -> None:
        """Replay on the engine the hub serves with (its event loop `loop`), not on a second model copy."""
        self.engine, self.loop = engine, loop

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

    def promote(self, ref: str, *, override: bool = False) -> Adapter:
        """Promote a version after the guard (a replay's accuracy drop or KL may refuse it with Conflict;
        ``override`` skips it); the one promoted before it (same base) is retired. Blocking."""
        adapter = self.adapters.get(ref)
        if not override:
            self.guard(adapter)
        return self.adapters.promote(adapter.ref)

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
            report["flips"] = flip_report(report)
        return report

    def reward_model(self) -> Adapter | None:
        """The newest registered reward model that is not retired, if any (the one triggered PPO uses too)."""
        return newest_reward_model(self.store)

    def replay(self, ref: str) -> dict[str, Any]:
        """Answer the replay set with ``ref`` and with the promoted model (or the base); store and return
        the report. Blocking: seconds on the demo model, more on a real one."""
        from training.replay import add_rewards, run_replay
        from training.replay_sets import replay_set

        adapter = self.adapters.get(ref)
        if not Path(adapter.path).is_dir():
            raise NotFound(f"{adapter.ref}'s directory {adapter.path!r} is gone", param="adapter")
        promoted = self.promoted()
        if promoted is not None and (promoted.id == adapter.id or not Path(promoted.path).is_dir()):
            promoted = None  # replayed against the base
        reward = self.reward_model()
        replay = replay_set(adapter.base, self.replay_prompts)
        if self.engine is not None and self.loop is not None:
            if _running_loop() is self.loop:
                raise RuntimeError("PromotionService.replay blocks: call it from a worker thread")
            future = asyncio.run_coroutine_threadsafe(
                self._replay_served(adapter, promoted, replay), self.loop
            )
            report = future.result(timeout=REPLAY_TIMEOUT_S)
            if reward is not None:
                add_rewards(report, replay.prompts, reward.path, adapter.base)
        else:  # no engine here (`tunehub adapters promote`): a local engine of its own
            report = run_replay(
                adapter.base,
                adapter.path,
                promoted.path if promoted else None,
                replay=replay,
                candidate_name=adapter.ref,
                incumbent_name=promoted.ref if promoted else "base",
                reward_model=reward.path if reward else None,
            )
        report["adapter"] = adapter.ref
        report["against"] = promoted.ref if promoted else "base"
        report["flips"] = flip_report(report)
        path = self.replay_path(adapter)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside and renamed, so a half-written report is never read (one temp name per replay:
        # two replays of one adapter at once must not share it)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(json.dumps(report, ensure_ascii=False, indent=1))
        Path(tmp.name).replace(path)
        return report

    async def _replay_served(self, adapter: Adapter, promoted: Adapter | None, replay) -> dict[str, Any]:
        """The replay on the hub's engine, under the served names of the candidate and the promoted adapter;
        one not served now is loaded for the replay under a name of its own and unloaded after."""
        from training.replay import replay_on_engine

        served = self.adapters.served_names()
        loaded: list[str] = []

        async def serve(a: Adapter) -> str:
            name = served.get(str(Path(a.path).resolve()))
            if name is None:
                name = f"replay.{a.name}@v{a.version}"[:64]
                await self.engine.load_adapter(name, Path(a.path))
                loaded.append(name)
            return name

        try:
            candidate = await serve(adapter)
            incumbent = await serve(promoted) if promoted is not None else None
            return await replay_on_engine(
                self.engine,
                replay,
                candidate=candidate,
                incumbent=incumbent,
                candidate_name=adapter.ref,
                incumbent_name=promoted.ref if promoted else "base",
            )
        finally:
            for name in loaded:
                try:
                    await self.engine.unload_adapter(name)
                except Exception as e:  # the replay's answer stands; a stale replay name is only untidy
                    log.warning("replay adapter %s not unloaded: %s", name, e)

    def current_report(self, adapter: Adapter) -> dict[str, Any]:
        """The stored report if it was made against the model promoted now, else a fresh replay."""
        promoted = self.promoted()
        against = promoted.ref if promoted is not None and promoted.id != adapter.id else "base"
        report = self.report(adapter.ref)
        if report is None or report.get("against") != against:
            report = self.replay(adapter.ref)
        return report

    # ----- history -----------------------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """Each promotion and rollback, oldest first: the version promoted, its rating now on the leaderboard
        (with the 95% interval; None when no arena vote rated it) and its replay accuracy (None: never
        replayed). A version is rated under the name it is served as (``NAME`` or ``NAME@vN``)."""
        events = self.store.promotion_history()
        if not events:
            return []
        ratings = {r.model: r for r in self.feedback.leaderboard().ratings}
        served = self.adapters.served_names()
        history = []
        for event in events:
            adapter = event.adapter
            name = served.get(str(Path(adapter.path).resolve())) or served_name(adapter, set())
            rating = ratings.get(name)
            report = self.report(adapter.ref)
            accuracy = ((report or {}).get("candidate") or {}).get("accuracy")
            history.append(
                {
                    "at": event.at,
                    "adapter": adapter.ref,
                    "action": event.action,
                    "rated_as": name,
                    "rating": rating.rating if rating else None,
                    "lower": rating.lower if rating else None,
                    "upper": rating.upper if rating else None,
                    "accuracy": accuracy,
                }
            )
        return history

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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def run_auto_promotion(promotion: PromotionService, interval_s: float = 60.0) -> None:
    """Check the candidates every ``interval_s`` (--auto-promote-interval) in a worker thread, promoting
    those the rule accepts; runs until cancelled (the hub's lifespan does that)."""
    import asyncio

    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(promotion.auto_promote)
        except Exception as e:  # the next round tries again; the hub keeps serving
            log.warning("automatic promotion check failed: %s", e)
