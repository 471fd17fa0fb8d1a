"""What `--quantize 8bit|4bit` costs in speed and saves in memory, against the unquantized base in one run.

    python -m bench.quantize [--model DIR] [--clients 8] [--tokens 32]

Loads the model three times through the LocalEngine (none, 8bit, 4bit via bitsandbytes), reports the weight
memory (`get_memory_footprint`) and the tokens/s of `--clients` concurrent greedy requests, with ratios
against the unquantized model.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from bench.common import add_model_arguments, prepare
from serving.engine import GenerationRequest, SamplingParams
from serving.loader import load_local_engine

PROMPTS = [
    "What is 12 + 7?",
    "What is the capital of France?",
    "Convert 3 km to meters.",
    "Reverse the word garden.",
]


async def measure(model_dir: Path, quantize: str, clients: int, tokens: int) -> dict:
    engine = load_local_engine(model_dir, quantize=quantize)
    memory = engine.weight_bytes()
    await engine.start()

    async def one(i: int) -> int:
        request = GenerationRequest(
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            sampling=SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True),
        )
        count = 0
        async for delta in engine.generate(request):
            count = delta.completion_tokens
        return count

    try:
        await asyncio.gather(*(one(i) for i in range(2)))  # warm-up
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - start
    finally:
        await engine.close()
    return {"memory": memory, "tokens_per_s": sum(counts) / wall}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    model_dir = prepare(args)
    results = {
        q: asyncio.run(measure(model_dir, q, args.clients, args.tokens)) for q in ("none", "8bit", "4bit")
    }
    base = results["none"]
    print(
        f"\nquantized serving: {model_dir.name}, {args.clients} concurrent requests x {args.tokens} tokens\n"
    )
    print(f"{'quantize':>8} | {'weights MB':>10} | {'memory ratio':>12} | {'tok/s':>7} | {'speed ratio':>11}")
    for name, r in results.items():
        print(
            f"{name:>8} | {r['memory'] / 1e6:>10.2f} | {r['memory'] / base['memory']:>11.2f}x | "
            f"{r['tokens_per_s']:>7.0f} | {r['tokens_per_s'] / base['tokens_per_s']:>10.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
