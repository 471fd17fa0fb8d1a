"""`tunehub train` and `tunehub jobs`: training jobs from the command line, against the data dir's store.

tunehub train {sft,reward,dpo,kto,ppo,rloo,grpo} --data (feedback|PATH) --method METHOD --name NAME [--base MODEL]
              [--data-dir DIR] [--parent ADAPTER] [--max-steps N] [--epochs N] [--learning-rate LR]
              [--batch-size N] [--dtype auto|float32|bfloat16|float16] [--chat-template FILE|NAME]
              [--only-new] [--exclude-reasons too_long,...] [--gpus N [--strategy ddp|zero2|zero3|fsdp]] [--set KEY=VALUE ...]
tunehub jobs list [--status STATUS] | show JOB_ID [--log] | cancel JOB_ID

`tunehub train` runs the job in the foreground, in a worker process as the hub does (OOM retry included),
with a progress bar; it registers the adapter in the store and prints its directory last. Ctrl-C cancels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import DATA_DIR_HELP, open_store, progress_bar, resolve_model

# training.jobs.spec.STAGES (a test keeps them equal)
STAGES = ("sft", "reward", "dpo", "kto", "ppo", "rloo", "grpo")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # serving/loader.DTYPE_CHOICES, the stage's precision


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params(args: argparse.Namespace) -> dict:
    from ..jobs_service import job_params

    settings = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"tunehub: --set {item!r} is not KEY=VALUE (e.g. --set beta=0.2)")
        settings[key.replace("-", "_")] = _parse_value(value)
    return job_params(
        args.stage,
        args.method,
        max_steps=args.max_steps,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        precision=args.dtype,
        exclude_reasons=args.exclude_reasons,
        extra=settings,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from feedback.store import Store
    from training.jobs.queue import JobQueue
    from training.jobs.runner import JobRunner
    from training.jobs.spec import JobError, JobSpec

    from ..settings import Settings

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    try:  # a hub id, directory or GGUF file (converted once), or the demo model
        base = resolve_model(Settings(model=args.base, data_dir=data_dir)).path
    except ValueError as exc:
        print(f"tunehub: --base: {exc}", file=sys.stderr)
        return 2
    chat_template = None
    if args.chat_template:
        from serving.chat_templates import ChatTemplateError, read_chat_template

        try:  # a shipped name or a file: the job carries the text
            chat_template, _ = read_chat_template(args.chat_template)
        except ChatTemplateError as exc:
            print(f"tunehub: {exc}", file=sys.stderr)
            return 2
    with Store(data_dir / "feedback.db") as store:
        spec = JobSpec(
            stage=args.stage,
            method=args.method,
            data=args.data,
            name=args.name,
            base=str(base),
            parent=args.parent,
            params=_params(args),
            only_new=args.only_new,
            foreground=True,
            gpus=args.gpus,
            strategy=args.strategy,
            chat_template=chat_template,
        )
        try:
            job = JobQueue(store).submit(spec)
        except JobError as e:
            print(f"tunehub: {e.param}: {e.message}", file=sys.stderr)
            return 2
        print(f"job {job.id}: {args.stage} {args.method} -> {args.name}", file=sys.stderr)
        update, close = progress_bar(f"{args.stage} {args.name}")

        def on_progress(progress) -> None:
            if progress.total:
                update(progress.step, progress.total)

        try:
            job = JobRunner(store, data_dir).run_foreground(job.id, on_progress=on_progress)
        except KeyboardInterrupt:
            close()
            print(f"tunehub: job {job.id} cancelled", file=sys.stderr)
            return 130
        close()
        if job.status != "succeeded":
            print(f"tunehub: job {job.id} {job.status}: {job.error}", file=sys.stderr)
            print(f"  log: {job.log_path}", file=sys.stderr)
            return 1
        metrics = job.metrics
        loss = metrics.get("train_loss")
        print(
            f"trained {metrics.get('adapter_ref')} in {metrics.get('steps')} steps"
            + (
                f", loss {metrics.get('first_loss'):.4f} -> {loss:.4f}"
                if loss and metrics.get("first_loss")
                else ""
            ),
            file=sys.stderr,
        )
        print(metrics["adapter_path"])
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        jobs = store.list_jobs(status=args.status, limit=args.limit)
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'id':22} {'stage':6} {'method':6} {'name':20} {'status':10} {'progress':>8}  adapter")
    for job in jobs:
        name = str(job.params.get("name", ""))[:20]
        print(
            f"{job.id:22} {job.stage:6} {job.method:6} {name:20} {job.status:10} {job.progress:>8.0%}  "
            f"{job.adapter or '-'}"
        )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from feedback.errors import NotFound
    from training.jobs.faults import log_tail
    from training.jobs.launch import format_command, job_command
    from training.jobs.queue import job_spec

    from ..views import job_body

    with open_store(args) as store:
        try:
            job = store.get_job(args.job_id)
        except NotFound as e:
            print(f"tunehub: {e.message}", file=sys.stderr)
            return 1
    command = format_command(job_command(job_spec(job), Path(args.data_dir) / "jobs" / job.id))
    print(json.dumps({**job_body(job, command), "log_path": job.log_path}, indent=2))
    if args.log and job.log_path:
        print(log_tail(Path(job.log_path), lines=args.lines))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    from feedback.errors import StoreError
    from training.jobs.queue import JobQueue

    with open_store(args) as store:
        try:
            job = JobQueue(store).cancel(args.job_id)
        except StoreError as e:
            print(f"tunehub: {e.message}", file=sys.stderr)
            return 1
    print(f"job {job.id} cancelled (the runner following it stops its worker)")
    return 0


def add_train_commands(sub) -> None:
    train = sub.add_parser(
        "train",
        help="run a training stage in the foreground and register its adapter",
        description="Train a stage in a worker process, with a progress bar; prints the adapter directory last.",
    )
    train.add_argument("stage", choices=STAGES)
    train.add_argument(
        "--data", required=True, help="'feedback' (a snapshot of the votes) or a file/directory"
    )
    train.add_argument(
        "--method", default="lora", help="full, freeze, lora, dora, qlora or ia3 (default: lora)"
    )
    train.add_argument(
        "--name", required=True, help="the adapter's name (a later version is served as NAME@vN)"
    )
    train.add_argument("--base", help="base model: hub id, directory or .gguf file (default: the demo model)")
    train.add_argument("--data-dir", default="./tunehub-data", help=DATA_DIR_HELP)
    train.add_argument(
        "--parent", help="adapter to start from: a registered name (name, name@N) or a directory"
    )
    train.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    train.add_argument("--epochs", type=float, help="passes over the training rows")
    train.add_argument("--learning-rate", type=float, help="peak learning rate")
    train.add_argument("--batch-size", type=int, help="rows per forward pass on each device")
    train.add_argument(
        "--dtype",
        choices=DTYPES,
        help="compute precision (mixed, through autocast): auto (the default) picks bfloat16 on GPUs and CPUs "
        "with AVX512_BF16/AMX, float16 on older GPUs, float32 on other CPUs; the job's log says which and why",
    )
    train.add_argument(
        "--chat-template",
        help="a .jinja file or a shipped template (chatml, llama3, mistral, zephyr) for a base without one "
        "(plain prompt/completion strings train without one)",
    )
    train.add_argument(
        "--exclude-reasons",
        metavar="REASONS",
        help="leave out the votes (and rows) that gave any of these reasons, comma-separated, e.g. "
        "too_long,wrong ('too long' and too_long are one reason)",
    )
    train.add_argument("--only-new", action="store_true", help="feedback data: only votes since the last run")
    train.add_argument(
        "--gpus", type=int, default=1, help="GPUs to train on; more than 1 runs under `accelerate launch`"
    )
    train.add_argument(
        "--strategy",
        default="ddp",
        choices=("ddp", "zero2", "zero3", "fsdp"),  # training.jobs.launch.STRATEGIES
        help="with --gpus > 1: data parallel, DeepSpeed ZeRO-2/3 or FSDP (training/accelerate/*.yaml)",
    )
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other setting of the stage (repeatable), e.g. --set beta=0.2 --set lora_rank=8; "
        "`python -m training.STAGE --help` lists them",
    )
    train.set_defaults(func=cmd_train)

    jobs = sub.add_parser("jobs", help="list, show or cancel training jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_sub.add_parser("list", help="jobs, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--data-dir", default="./tunehub-data", help=DATA_DIR_HELP)
    listing.set_defaults(func=cmd_jobs_list)
    show = jobs_sub.add_parser("show", help="one job as JSON (status, progress, metrics, error)")
    show.add_argument("job_id")
    show.add_argument("--log", action="store_true", help="also print the end of the job's log")
    show.add_argument("--lines", type=int, default=30)
    show.add_argument("--data-dir", default="./tunehub-data", help=DATA_DIR_HELP)
    show.set_defaults(func=cmd_jobs_show)
    cancel = jobs_sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.add_argument("--data-dir", default="./tunehub-data", help=DATA_DIR_HELP)
    cancel.set_defaults(func=cmd_jobs_cancel)
