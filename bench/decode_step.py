"""Where one client's decode step goes: the engine's step for one row against the matmuls it has to do and
the memory-bandwidth limit (issue 12's one-client target: >= 40% of that limit).

    python -m bench.decode_step [--model DIR|FILE.gguf|smollm2] [--dtype auto] [--threads N] [--steps 64]

Loads the model as `tunehub serve` does (serving.loader.load_local_engine: the same dtype choice, bfloat16
weights packed for oneDNN, the LoRA hooks) and measures in this process's main thread, on --threads threads
(default: every core this process may use), the best of a few runs of each:
  * the read bandwidth (bench.serving.read_bandwidth) over the bytes of weights one step reads: the limit;
  * the engine's decode step for one row: a prefill, then --steps steps through serving.kvbatch.step, as the
    engine's worker runs them (sampling left out);
  * every linear layer of the model once for one row, in the order a step calls them: the matmuls alone,
    the floor for any step built on these kernels;
  * the same with the projections that read the same input fused into one matrix (q, k and v; gate and
    up: the llama-family names), which a step could call instead.
Each is printed as ms per step, tokens/s and share of the limit; the step's rest (step - matmuls) is the
attention, the small ops and the Python around them.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import add_model_arguments
from hub.settings import quiet_environment

# sibling projections that read the same input in llama-family decoder layers
FUSABLE = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
TARGET = 0.40  # one client's share of the bandwidth limit (issue 12)


def best_ms(run: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """The fastest of `repeats` timed calls of `run`, in ms, after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def linear_calls(model, fuse: bool = False) -> list[Callable[[], object]]:
    """One call per linear layer for one row of input, as the layer runs in a step (packed, hooks and all);
    with `fuse`, each group of FUSABLE siblings is one layer over their stacked weights instead, packed as
    serving.prepack packs the model's."""
    import torch

    from serving.prepack import prepack_linears

    def one_row(layer) -> Callable[[], object]:
        x = torch.randn(1, 1, layer.in_features, dtype=layer.weight.dtype)
        return lambda: layer(x)

    calls = []
    for parent in model.modules():
        children = dict(parent.named_children())
        grouped: set[str] = set()
        for group in FUSABLE if fuse else ():
            layers = [children.get(name) for name in group]
            if all(isinstance(layer, torch.nn.Linear) for layer in layers):
                weight = torch.cat([layer.weight.detach() for layer in layers])
                merged = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
                merged.weight = torch.nn.Parameter(weight, requires_grad=False)
                prepack_linears(merged)
                calls.append(one_row(merged))
                grouped.update(group)
        calls += [
            one_row(child)
            for name, child in children.items()
            if isinstance(child, torch.nn.Linear) and name not in grouped
        ]
    return calls


def measure(engine, steps: int, threads: int) -> dict[str, float | None]:
    """ms per step of the engine's one-row decode, the matmuls alone and fused (see the module's docstring)."""
    import torch

    from serving import kvbatch
    from serving.engine import BASE_ADAPTER

    torch.set_num_threads(threads)
    model = engine._model  # the engine's MultiLoraModel: what its worker calls
    prompt = engine.tokenizer("Tell me about the history of the printing press.")["input_ids"]

    def decode() -> None:
        logits, batch = kvbatch.prefill(model.forward, [prompt], [BASE_ADAPTER], engine._pad_id, model.device)
        token = int(logits.argmax(-1))
        for _ in range(steps):
            token = int(kvbatch.step(model.forward, batch, [token], [BASE_ADAPTER]).argmax(-1))

    def timed_decode() -> float:
        start = time.perf_counter()
        decode()
        whole = time.perf_counter() - start
        start = time.perf_counter()
        kvbatch.prefill(model.forward, [prompt], [BASE_ADAPTER], engine._pad_id, model.device)
        return (whole - (time.perf_counter() - start)) / steps * 1e3

    with torch.inference_mode():
        decode()
        step = min(timed_decode() for _ in range(5))
        plain, fused = linear_calls(model.base), linear_calls(model.base, fuse=True)
        matmuls = best_ms(lambda: [call() for call in plain])
        fused_ms = best_ms(lambda: [call() for call in fused]) if len(fused) < len(plain) else None
    return {"step": step, "matmuls": matmuls, "fused": fused_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--dtype", default="auto", help="as `tunehub serve --dtype` (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps a run times")
    args = parser.parse_args(argv)
    quiet_environment()  # the spin between ops the hub sets, before torch starts its threads
    from bench.serving import read_bandwidth, resolve_model
    from serving.loader import load_local_engine

    model_dir: Path = resolve_model(args)
    threads = args.threads or len(os.sched_getaffinity(0))
    engine = load_local_engine(model_dir, dtype=args.dtype, threads=threads)
    base = engine._model.base
    dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    bandwidth = read_bandwidth()
    # in this thread, as read_bandwidth: a second thread's OpenMP team would compete with the first (serving.openmp)
    result = measure(engine, args.steps, threads)
    bandwidth = max(bandwidth, read_bandwidth())  # before and after: the better of the two
    limit_ms = weight_bytes / bandwidth * 1e3
    print(
        f"tunehub decode step, one row: {model_dir.name}, {dtype}, {threads} thread(s); "
        f"{weight_bytes / 1e6:.0f} MB of weights a step, read bandwidth {bandwidth / 1e9:.1f} GB/s: "
        f"limit {limit_ms:.2f} ms a step ({1e3 / limit_ms:.1f} tok/s)\n"
    )
    print(f"{'':34} | ms/step |  tok/s | share of the limit | weights read at")
    rows = [
        ("engine step (one row)", result["step"]),
        ("its linear layers alone", result["matmuls"]),
        ("the same, q/k/v and gate/up fused", result["fused"]),
    ]
    for name, ms in rows:
        if ms is None:
            print(f"{name:34} |       - |      - |                  - | (no fusable layers)")
            continue
        print(
            f"{name:34} | {ms:7.2f} | {1e3 / ms:6.1f} | {limit_ms / ms:17.0%} | {weight_bytes / ms / 1e6:.1f} GB/s"
        )
    rest = result["step"] - result["matmuls"]
    print(
        f"\nthe rest of the step (attention, small ops, Python): {rest:.2f} ms; a step within "
        f"{TARGET:.0%} of the limit may take {limit_ms / TARGET:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
