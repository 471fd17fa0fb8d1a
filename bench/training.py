"""Training benchmark: SFT throughput with and without packing, tunehub's SFT against bare TRL, peak memory.

    python -m bench.training [--model DIR] [--steps 40]                 # CPU: the demo model
    python -m bench.training --gpu [--steps 40]                         # a GPU machine: a ~0.5B model
    python -m bench.training --only smollm2 [--real-steps 4]            # the real model: fp32 vs --dtype auto

In one run, each case in its own process (so peak memory is the case's own):
  * SFT tokens/s (tokens that are not padding, per second of `trainer.train()`) through tunehub's SFT stage
    (training/sft.py, LoRA) with packing against without, on the demo corpus's short conversations, same
    steps and rows per step; target >= 1.5x;
  * tunehub's SFT stage against a bare TRL `SFTTrainer` script with the same model, data, LoRA and trainer
    settings, both with packing; target >= 0.95x;
  * peak memory of full fine-tuning, LoRA and QLoRA on the same model (~58M parameters, built from a
    config): on the CPU the process's peak RSS less what it held once its libraries were imported, on a GPU
    `torch.cuda.max_memory_allocated`.
With --gpu every case runs on a model of about 0.5B parameters built from a config in bf16 (random weights
with the demo tokenizer: no download) and prints tokens/s and peak memory per method.

SmolLM2-135M-Instruct (tests/support/real_model.py), LoRA SFT and DPO as a job trains them: the config the
job worker builds (`training.jobs.worker.build_config`, default job params) with only the steps capped
and the eval interval that of the uncapped run (a cap of a few steps would otherwise evaluate after
every one), logging every step, in fp32 and in the auto precision (bf16 on a CPU with AVX512_BF16/AMX); target auto >= 1.4x
tokens/s. Tokens/s counts the non-padding tokens of the timed steps (the first, warm-up, step is left
out) over their wall time; the CPU seconds per step are printed too, steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import add_model_arguments, prepare

# (hidden, intermediate, layers, heads) of the models built from a config
SHAPES = {"memory": (768, 2048, 8, 12), "gpu": (1024, 4096, 28, 16)}


def write_corpus(path: Path, rows: int) -> Path:
    from training.demo.corpus import conversations

    with path.open("w") as f:
        for messages in conversations(rows, seed=7):
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def build_model(demo: Path, out: Path, shape: str, dtype: str) -> Path:
    """A Llama with the demo tokenizer and random weights, of the size `SHAPES[shape]`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(demo)
    base = LlamaConfig.from_pretrained(demo)
    config = LlamaConfig(
        **{
            **base.to_dict(),
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "head_dim": hidden // heads,
            "tie_word_embeddings": False,
        }
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# -- the cases, each run in a child process -----------------------------------------------------------------


def tunehub_sft(model: str, data: str, out: str, method: str, packing: bool, steps: int, batch: int) -> dict:
    from training.sft import SFTConfig, main

    config = SFTConfig(
        model=model,
        data=data,
        output_dir=out,
        method=method,
        packing=packing,
        max_steps=steps,
        per_device_batch_size=batch,
        max_length=256,
        eval_fraction=0.0,
        early_stopping_patience=0,
        checkpoint_steps=0,
        loss_check_steps=0,
        logging_steps=5,
        lora_rank=16,
    )
    from transformers import TrainerCallback

    class ResidentWhileTraining(TrainerCallback):
        """The largest resident memory seen after a forward/backward pass or an optimizer step: what
        training holds (weights, gradients, optimizer state), without the load's transient copies."""

        peak = 0
        weights = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = model.get_memory_footprint()  # parameters and buffers as stored (4-bit packed)

        def on_substep_end(self, args, state, control, **kwargs):
            # glibc keeps freed memory (the load's copies) in its arenas; hand it back before reading RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.peak = max(self.peak, rss_bytes())

        on_step_end = on_substep_end

    resident = ResidentWhileTraining()
    main(config, callbacks=[resident])
    metrics = json.loads((Path(out) / "tunehub_training.json").read_text())["metrics"]
    return {
        "tokens_per_second": metrics["tokens_per_second"],
        "train_seconds": metrics["train_seconds"],
        "training_bytes": resident.peak,
        "weight_bytes": resident.weights,
    }


def bare_trl_sft(model: str, data: str, out: str, steps: int, batch: int) -> dict:
    """What a user would write with TRL alone: the same model, rows, LoRA and settings as tunehub's SFT."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if cuda else torch.float32),
        args=SFTConfig(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=2e-4,
            warmup_steps=0.05,
            max_length=256,
            packing=True,
            assistant_only_loss=True,
            logging_steps=5,
            save_strategy="no",
            report_to="none",
            bf16=cuda,
            use_cpu=not cuda,
            gradient_checkpointing=cuda,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=load_dataset("json", data_files=data, split="train"),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1]
    return {"tokens_per_second": tokens / seconds, "train_seconds": seconds}


def write_pairs(work: Path) -> Path:
    """24 training pairs and 8 held out (a small eval keeps the drift watch's generation short). Few pairs, so
    that a run capped at a few steps passes over them more than once, as the default 200 steps do over a
    vote export of a few hundred: DPO then scores them under the reference up front, as it would there."""
    from tests.support.rows import preference_pairs, write_jsonl

    write_jsonl(work / "pairs.eval.jsonl", preference_pairs(8, seed=3, split="heldout"))
    return write_jsonl(work / "pairs.jsonl", preference_pairs(24, seed=1, split="train"))


def job_case(model: str, data: str, out: str, stage: str, precision: str, steps: int) -> dict:
    """One stage as a job runs it: the worker's config from default job params, the steps capped."""
    import dataclasses

    from transformers import TrainerCallback

    from training.data import load_training_data
    from training.jobs.spec import JobSpec, config_class
    from training.jobs.worker import build_config
    from training.stage_run import total_steps

    spec = JobSpec(stage=stage, method="lora", data=data, name="bench", base=model)
    defaults = build_config(spec, {"params": {}}, data, Path(out))
    # the eval interval of the uncapped run (training.stage_run.trainer_arguments: about 8 per run)
    rows = load_training_data(data, "sft" if stage == "sft" else "pairs", seed=defaults.seed).train
    eval_steps = max(1, total_steps(defaults, len(rows)) // 8)
    # logged every step: the timed steps' tokens are read from the log (`num_tokens`)
    params = {"max_steps": steps, "eval_steps": eval_steps, "precision": precision, "logging_steps": 1}
    config = build_config(spec, {"params": params}, data, Path(out))
    assert config_class(stage) is type(config)

    class StepClock(TrainerCallback):
        """Wall and CPU seconds of each optimizer step, and the non-padding tokens trained so far."""

        def __init__(self):
            self.steps: list[tuple[float, float]] = []
            self.tokens: list[tuple[int, float]] = []  # (step, tokens trained by then)
            self.created = time.perf_counter()
            self.setup = (
                0.0  # from the stage's start to its first step: loading, tokenising, reference scores
            )

        def on_step_begin(self, args, state, control, **kwargs):
            self.wall, self.cpu = time.perf_counter(), time.process_time()
            self.setup = self.setup or self.wall - self.created

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append((time.perf_counter() - self.wall, time.process_time() - self.cpu))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.tokens.append((state.global_step, logs["num_tokens"]))

    clock = StepClock()
    from importlib import import_module

    import_module(f"training.{stage}").main(config, callbacks=[clock])
    metrics = json.loads((Path(out) / "tunehub_training.json").read_text())["metrics"]
    by_step = dict(clock.tokens)  # logged every `logging_steps`; the run logs its last step too
    first, last = 1, len(clock.steps)
    if first not in by_step or last not in by_step:
        raise SystemExit(f"num_tokens not logged at steps {first} and {last}: {clock.tokens}")
    tokens = by_step[last] - by_step[first]
    wall = sum(w for w, _ in clock.steps[first:])
    cpu = sum(c for _, c in clock.steps[first:])
    return {
        "tokens_per_second": tokens / wall,
        "tokens_per_cpu_second": tokens / cpu,
        "step_seconds": wall / (last - first),
        "step_cpu_seconds": cpu / (last - first),
        "first_step_seconds": clock.steps[0][0],
        "setup_seconds": clock.setup,
        "precision": metrics["precision"],
        "train_seconds": metrics["train_seconds"],
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k in SHOWN_SETTINGS},
    }


# the job defaults the SmolLM2 cases print, so a change in them shows next to the figures
SHOWN_SETTINGS = (
    "per_device_batch_size",
    "max_length",
    "learning_rate",
    "gradient_checkpointing",
    "eval_steps",
)


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def run_case(args: argparse.Namespace) -> None:
    import bitsandbytes  # noqa: F401  (every case pays for the same libraries before its baseline)
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    baseline = rss_bytes()
    work = Path(args.work)
    out = str(work / f"out-{args.case}-{args.method}-{int(args.packing)}")
    if args.case == "bare":
        result = bare_trl_sft(args.model, args.data, out, args.steps, args.batch)
    elif args.case == "job":
        out = str(work / f"out-{args.stage}-{args.precision}")
        result = job_case(args.model, args.data, out, args.stage, args.precision, args.steps)
    else:
        result = tunehub_sft(args.model, args.data, out, args.method, args.packing, args.steps, args.batch)
    if torch.cuda.is_available():
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    result["baseline_bytes"] = baseline
    print("RESULT " + json.dumps(result))


def child(name: str, common: list[str], *extra: str) -> dict:
    """Run one case in a fresh process; returns its result, with its peak RSS when it ran on the CPU."""
    work = Path(common[common.index("--work") + 1])
    log = work / f"case-{len(list(work.glob('case-*.log')))}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "bench.training", *common, *extra]
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: ru_maxrss is its peak (KiB)
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"case {name} failed ({log}):\n{text[-3000:]}")
    result = json.loads(
        next(line for line in text.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT ")
    )
    result["wall_seconds"] = time.perf_counter() - started
    # on the CPU: the peak resident memory above what the process held once its libraries were imported
    result.setdefault("peak_bytes", usage.ru_maxrss * 1024 - result["baseline_bytes"])
    line = f"  {name}: {result['tokens_per_second']:.0f} tok/s, peak {result['peak_bytes'] / 2**20:.0f} MiB"
    if "step_seconds" in result:
        line += (
            f", {result['step_seconds']:.1f} s/step ({result['step_cpu_seconds']:.1f} CPU s; first step "
            f"{result['first_step_seconds']:.1f} s, {result['setup_seconds']:.0f} s before it), "
            f"{result['precision']}, {result['config']}"
        )
    print(line, flush=True)
    return result


def throughput_table(common: list[str], model: str) -> None:
    cases = [*common, "--model", model, "--case"]
    padded = child("tunehub SFT, no packing", cases, "tunehub", "--packing", "0")
    packed = child("tunehub SFT, packing", cases, "tunehub", "--packing", "1")
    bare = child("bare TRL SFTTrainer, packing", cases, "bare")
    ratio = packed["tokens_per_second"] / padded["tokens_per_second"]
    print(
        f"{'SFT tokens/s, packing / no packing':<52} | {ratio:>11.2f}x | >= 1.5x   "
        f"({packed['tokens_per_second']:.0f} vs {padded['tokens_per_second']:.0f} tok/s)"
    )
    ratio = packed["tokens_per_second"] / bare["tokens_per_second"]
    print(
        f"{'tunehub SFT / bare TRL SFTTrainer (tokens/s)':<52} | {ratio:>11.2f}x | >= 0.95x  "
        f"({packed['tokens_per_second']:.0f} vs {bare['tokens_per_second']:.0f} tok/s)"
    )


def memory_table(common: list[str], model: str, unit: str) -> None:
    from training.estimate import ModelShape

    params = ModelShape.from_config(json.loads((Path(model) / "config.json").read_text())).parameters
    # peak memory is reached in the first optimizer step (weights, gradients, AdamW moments, activations)
    cases = [*common, "--steps", "3", "--model", model, "--case", "tunehub", "--method"]
    for method in ("full", "lora", "qlora"):
        result = child(method, cases, method)
        line = f"{f'{unit}, {method} ({params / 1e6:.0f}M parameters)':<52} | {result['peak_bytes'] / 2**20:>8.0f} MiB |"
        if "training_bytes" in result and unit.startswith("peak RSS"):
            held = result["training_bytes"] - result["baseline_bytes"]
            line += f" {held / 2**20:.0f} MiB held while training, weights {result['weight_bytes'] / 2**20:.0f} MiB;"
        print(f"{line} {result['tokens_per_second']:.0f} tok/s")


def smollm2_table(work: Path, steps: int, stages: tuple[str, ...] = ("sft", "dpo")) -> None:
    """LoRA SFT and DPO on SmolLM2 as jobs train them, fp32 against the auto precision."""
    from tests.support.real_model import smollm2_directory

    model = str(smollm2_directory())
    # 400 conversations: the run's last evaluation (a tenth of them, held out) stays short
    sft_data = str(write_corpus(work / "sft-smollm2.jsonl", 400))
    pairs = str(write_pairs(work))
    for stage, data in (("sft", sft_data), ("dpo", pairs)):
        if stage not in stages:
            continue
        cases = [
            "--steps",
            str(steps),
            "--data",
            data,
            "--work",
            str(work),
            "--model",
            model,
            "--case",
            "job",
        ]
        results = {
            precision: child(
                f"SmolLM2 LoRA {stage}, {precision}", cases, "--stage", stage, "--precision", precision
            )
            for precision in ("fp32", "auto")
        }
        fp32, auto = results["fp32"], results["auto"]
        ratio = auto["tokens_per_second"] / fp32["tokens_per_second"]
        cpu_ratio = auto["tokens_per_cpu_second"] / fp32["tokens_per_cpu_second"]
        label = f"SmolLM2 LoRA {stage.upper()} tok/s, auto ({auto['precision']}) / fp32"
        print(
            f"{label:<52} | {ratio:>11.2f}x | >= 1.4x   ({auto['tokens_per_second']:.0f} vs "
            f"{fp32['tokens_per_second']:.0f} tok/s; per CPU second {cpu_ratio:.2f}x)",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per case")
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument(
        "--only",
        choices=["throughput", "memory", "smollm2"],
        help="run only the throughput, the memory or the SmolLM2 (real model) cases",
    )
    parser.add_argument(
        "--real-steps", type=int, default=4, help="optimizer steps per SmolLM2 case (the first is not timed)"
    )
    parser.add_argument(
        "--real-stages", default="sft,dpo", help="the SmolLM2 stages to run: sft, dpo or both"
    )
    parser.add_argument("--gpu", action="store_true", help="run on a ~0.5B model built in bf16 (needs CUDA)")
    parser.add_argument("--case", choices=["tunehub", "bare", "job"], help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="sft", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--packing", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only == "smollm2" and not args.model:
        args.model = "unused"  # the SmolLM2 cases name their model: no demo model to build
    demo = prepare(args)  # a case gets its model by --model too
    if args.case:
        run_case(args)
        return 0
    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-training-"))
    if args.only == "smollm2":
        print(f"tunehub training benchmark, SmolLM2 ({os.cpu_count()} CPUs), work dir {work}")
        print(f"\n{'check':<52} | {'measured':>12} | target")
        smollm2_table(work, args.real_steps, tuple(args.real_stages.split(",")))
        return 0
    data = str(write_corpus(work / "sft.jsonl", 4000))
    if args.gpu:
        throughput_model = memory_model = str(build_model(demo, work / "model-0.5b", "gpu", "bfloat16"))
    else:
        throughput_model = str(demo)
        memory_model = str(build_model(demo, work / "model-memory", "memory", "float32"))
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--data", data, "--work", str(work)]

    print(f"tunehub training benchmark ({os.cpu_count()} CPUs{', GPU' if args.gpu else ''}), work dir {work}")
    print(f"\n{'check':<52} | {'measured':>12} | target")
    if args.only != "memory":
        throughput_table(common, throughput_model)
    if args.only != "throughput":
        memory_table(common, memory_model, "max allocated" if args.gpu else "peak RSS above the runtime")
    if args.only is None and not args.gpu:
        smollm2_table(work, args.real_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
