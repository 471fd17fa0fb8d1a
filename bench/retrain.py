"""Retrain the votes earlier bench/loop.py runs left behind, with this checkout's job defaults (or with
settings changed on the command line), and judge each candidate against the base on the run's held-out
prompts. Every bench/loop.py run samples new answers to vote on and its result swings with them; this checks
a change of the training defaults on many vote sets at once, the same sets before and after.

    python -m bench.retrain RUN_DIR [RUN_DIR ...] [--stages dpo] [--set beta=0.1 ...] [--unset max_steps]

A RUN_DIR is the folder bench/loop.py printed as "data in ..." (a hub data directory per taste, each with the
jobs it ran). Each job of the chosen stages trains again as the job runner trains it (`training.jobs.worker`:
the settings `training.auto` chooses for what the params leave out, then the stage) on the vote snapshot the
job exported, in this process; `--set KEY=VALUE` adds a param (a JSON value) as a job body's ``params``
would, so ``--set beta=0.1 --set max_steps=-1 --set num_train_epochs=4`` trains DPO the way the defaults did
before beta 2 and 8 passes; `--unset KEY` drops a param the run's job was given, so ``--unset max_steps``
trains as a job without bench/loop.py's `--max-steps` cap would (the defaults choose the steps). Candidate
and base answer the run's held-out prompts greedily through the serving engine the regression replay uses
(`training.replay.run_replay`, float32); the taste's rater judges
them blind and the guardrail accuracy is taken as bench/loop.py takes it, with the perplexity of the replay
set's held-out text (a real model's set has one). Each row prints what the run itself measured for that stage
beside the retrained result; a ppo row also how often its reward model orders the judged answers as the rater
does (bench/loop_reasons.py). Target per row as in bench/loop.py: win >= 0.70 (demo) / 0.65 (real model),
guarded accuracy within 5 points, perplexity within 10% where it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import offline
from bench.loop import (
    RUN_FILE,
    TARGET_ACCURACY_DROP,
    TARGET_PERPLEXITY_RISE,
    TARGETS,
    Setup,
    accuracy,
    blind_win,
    setup_for,
)
from bench.loop_reasons import reward_model_agreement
from bench.loop_tastes import Taste
from training.demo.corpus import CheckablePrompt
from training.jobs.spec import JobSpec
from training.jobs.worker import DATA_DIR, LAUNCH_FILE, STAGES, build_config, choose_settings
from training.result import METADATA_FILE


@dataclass
class Retrained:
    run: str
    taste: str
    stage: str
    rows: int
    steps: str
    then_win: float | None  # what the bench run measured (served engine) for this taste and stage
    win: float
    base_accuracy: float
    accuracy: float
    target: float  # the win the model kind's target asks for (bench/loop.py TARGETS)
    perplexity: tuple[float | None, float | None] = (None, None)  # base, candidate (a replay set with a text)

    def met(self) -> bool:
        base_ppl, ppl = self.perplexity
        return (
            self.win >= self.target
            and self.accuracy >= self.base_accuracy - TARGET_ACCURACY_DROP
            and (not base_ppl or not ppl or ppl <= base_ppl * (1 + TARGET_PERPLEXITY_RISE))
        )


def jobs_of(run_dir: Path, stages: set[str]) -> list[tuple[str, Path, dict[str, Any]]]:
    """(taste, job directory, job spec) for every job of `stages` the run left, in a stable order."""
    found = []
    for launch in sorted(run_dir.glob(f"*/jobs/*/{LAUNCH_FILE}")):
        spec = json.loads(launch.read_text())["spec"]
        if spec["stage"] in stages:
            found.append((launch.parent.parent.parent.name, launch.parent, spec))
    return found


def retrain(
    job_dir: Path, out: Path, extra: dict[str, Any], unset: Collection[str] = ()
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Train the job in `job_dir` again on its exported votes, its params less `unset` and with `extra`;
    returns the result folder, its metrics and the settings it trained with (chosen, then given)."""
    launch = json.loads((job_dir / LAUNCH_FILE).read_text())
    data = str(job_dir / DATA_DIR)
    spec = JobSpec.from_dict({**launch["spec"], "data": data})
    kept = {key: value for key, value in launch["params"].items() if key not in unset}
    launch = {**launch, "params": {**kept, **extra}}
    chosen = choose_settings(spec, launch["params"], data)
    config = build_config(spec, launch, data, out, chosen)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's log lines; the result is what counts
        result = Path(importlib.import_module(STAGES[spec.stage][0]).main(config, callbacks=[]))
    settings = {key: choice.value for key, choice in chosen.items()} | launch["params"]
    return result, json.loads((result / METADATA_FILE).read_text())["metrics"], settings


@dataclass
class Judged:
    """What the regression replay measured of a retrained candidate on the run's held-out prompts."""

    base: list[str]  # greedy answers
    candidate: list[str]
    kl: float | None  # the candidate's mean per-token KL from the base
    perplexity: tuple[float | None, float | None]  # base, candidate, on the replay set's held-out text


def judged_answers(model_dir: Path, adapter: Path, setup: Setup) -> Judged:
    """Base and candidate on the run's held-out prompts, greedy, through the serving engine the regression replay
    uses (`training.replay.run_replay`: float32), with the perplexity the replay set's text gives (a real model's
    set has one; None otherwise)."""
    from training.replay import run_replay

    report = run_replay(model_dir, adapter, prompts=setup.judge_prompts, max_new_tokens=setup.max_tokens)
    rows = report["rows"]
    perplexity = report.get("perplexity") or {}
    return Judged(
        [row["base"] for row in rows],
        [row["candidate"] for row in rows],
        report["candidate"]["kl"],
        (perplexity.get("base"), perplexity.get("candidate")),
    )


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The bench/loop.py flags the run was made with (its run.json; older runs: the defaults)."""
    path = run_dir / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def then_wins(run_dir: Path) -> dict[tuple[str, str], float]:
    path = run_dir / "results.json"
    if not path.exists():
        return {}
    return {
        (run["taste"], stage["stage"]): stage["win_greedy"]
        for run in json.loads(path.read_text())
        for stage in run["stages"]
        if not stage.get("error")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="bench/loop.py data folders")
    parser.add_argument("--stages", default="dpo", help="comma-separated stages to retrain (default dpo)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a job param (JSON value)"
    )
    parser.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="KEY",
        help="drop a param the run's job had (max_steps: no bench cap)",
    )
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value  # a bare word, such as a loss type
    missing = [str(run) for run in args.runs if not run.is_dir()]
    if missing:
        parser.error(f"not a bench/loop.py data folder: {', '.join(missing)}")
    offline()
    rows: list[Retrained] = []
    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-retrain-"))
    for run_dir in args.runs:
        flags = run_settings(run_dir)
        then = then_wins(run_dir)
        for taste_name, job_dir, spec in jobs_of(run_dir, set(args.stages.split(","))):
            model_dir = Path(spec["base"])
            if not model_dir.exists():
                print(f"skipped {job_dir}: its base {model_dir} is not here", file=sys.stderr)
                continue
            setup = setup_for(model_dir, _loop_flags(flags))
            taste = setup.tastes[taste_name]
            result, metrics, settings = retrain(
                job_dir, work / f"{run_dir.name}-{taste_name}-{spec['stage']}", extra, args.unset
            )
            judged = judged_answers(model_dir, result, setup)
            base, answers = judged.base, judged.candidate
            row = Retrained(
                run_dir.name,
                taste_name,
                spec["stage"],
                len((job_dir / DATA_DIR / "train.jsonl").read_text().splitlines()),
                f"{metrics.get('steps')}/{metrics.get('max_steps')}",
                then.get((taste_name, spec["stage"])),
                blind_win(taste, setup.judge_prompts, base, answers, flags.get("seed", 0)),
                accuracy(setup.judge_prompts, base, setup.guarded),
                accuracy(setup.judge_prompts, answers, setup.guarded),
                TARGETS[setup.kind],
                judged.perplexity,
            )
            rows.append(row)
            print(_line(row), flush=True)
            trained = ", ".join(f"{k}={v}" for k, v in settings.items())
            print(f"    trained with {trained}; KL from the base {judged.kl:.3f}", flush=True)
            if spec["stage"] == "ppo" and (
                line := reward_model_line(settings, taste, setup.judge_prompts, base, answers)
            ):
                print(line, flush=True)
    print_summary(rows, extra, args.unset)
    print(f"candidates in {work}")
    return 0 if rows else 1


def reward_model_line(
    settings: dict[str, Any],
    taste: Taste,
    prompts: list[CheckablePrompt],
    base: list[str],
    answers: list[str],
) -> str | None:
    """How often the reward model a ppo job trained against (its params' reward_model) orders the judged
    answers as the rater does, as bench/loop.py checks it; None without one."""
    agreement = reward_model_agreement(settings.get("reward_model"), taste, prompts, (base, answers))
    return None if agreement is None else f"    its reward model against the rater: {agreement.describe()}"


def _loop_flags(flags: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(
        votes=flags.get("votes"),
        judge=flags.get("judge"),
        quick=flags.get("quick", False),
        seed=flags.get("seed", 0),
        max_tokens=flags.get("max_tokens"),
    )


def _line(r: Retrained) -> str:
    then = "-" if r.then_win is None else f"{r.then_win:.2f}"
    base_ppl, ppl = r.perplexity
    perplexity = f" | ppl {base_ppl:.1f} -> {ppl:.1f}" if base_ppl and ppl else ""
    return (
        f"{r.run:<28} {r.taste:<10} {r.stage:<5} | {r.rows:>4} rows {r.steps:>7} | win then {then:>4} "
        f"now {r.win:.2f} | accuracy {r.base_accuracy:.2f} -> {r.accuracy:.2f}{perplexity} | "
        f"{'met' if r.met() else 'not met'}"
    )


def print_summary(rows: list[Retrained], extra: dict[str, Any], unset: Collection[str] = ()) -> None:
    if not rows:
        print("no job of those stages in those folders")
        return
    by_taste: dict[str, list[Retrained]] = {}
    for r in rows:
        by_taste.setdefault(r.taste, []).append(r)
    settings = ", ".join([f"{k}={v}" for k, v in extra.items()] + [f"no {k}" for k in unset])
    settings = settings or "the job defaults"
    print(f"\nretrained with {settings}:")
    for taste, group in sorted(by_taste.items()):
        wins = sorted(r.win for r in group)
        print(
            f"  {taste:<10} {len(group):>3} vote sets: win >= {group[0].target:.2f} on "
            f"{sum(w >= group[0].target for w in wins)}, met (accuracy too) on {sum(r.met() for r in group)}; "
            f"win median {wins[len(wins) // 2]:.2f}, "
            f"lowest {wins[0]:.2f}; accuracy lowest {min(r.accuracy for r in group):.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
