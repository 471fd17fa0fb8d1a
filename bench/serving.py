"""Serving benchmark: tunehub's HTTP API under 1, 4 and 16 streaming clients against one-at-a-time generate.

    python -m bench.serving [--model DIR] [--requests-per-client 2] [--tokens 64]

Starts a real `tunehub serve` on 127.0.0.1 and measures, in the same run:
  * total tokens/s and p50/p95 time to first token for 1, 4 and 16 concurrent streaming clients, each request
    asking for exactly `--tokens` new tokens (ignore_eos), against the baseline a quick demo would use: one
    `model.generate` per request, one after another, same model, prompts and lengths (its time to first token
    is when the whole answer arrives, since it does not stream, counted from when all requests were sent);
  * 8 different LoRA adapters chosen at random per request against every request on one adapter;
  * adapter load latency (load + unload through the API), and failed requests while adapters are loaded and
    unloaded under load.
It prints a table with the ratios; the targets are in the last column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import add_model_arguments, prepare
from tests.support.adapters import make_lora_adapter
from tests.support.server import HubProcess

PROMPTS = [
    "What is 12 + 7?",
    "What is the capital of France?",
    "Convert 3 km to meters.",
    "Reverse the word garden.",
    "Hello! Who are you?",
    "What is 9 times 6?",
    "What is the capital of Japan?",
    "How many minutes are in 4 hours?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ----- baseline: one model.generate per request, one after another ---------------------------------------


def baseline(model_dir: Path, n_requests: int, tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    done_at, generated = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(n_requests):
            messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(
                **ids,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            generated += out.shape[1] - ids["input_ids"].shape[1]
            done_at.append(time.perf_counter() - start)
    wall = time.perf_counter() - start
    return {"tokens_per_s": generated / wall, "ttft": done_at, "wall": wall, "failed": 0}


# ----- tunehub through HTTP --------------------------------------------------------------------------------


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int, sent: float
) -> tuple[float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first, completion = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - sent
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - sent), completion


async def run_clients(
    url: str, clients: int, per_client: int, tokens: int, models: list[str], seed: int = 0
) -> dict:
    rng = random.Random(seed)
    plan = [
        [(rng.choice(models), PROMPTS[rng.randrange(len(PROMPTS))]) for _ in range(per_client)]
        for _ in range(clients)
    ]
    ttfts, failures, generated = [], [], 0

    async def client_loop(client: httpx.AsyncClient, jobs) -> None:
        nonlocal generated
        for model, prompt in jobs:
            try:
                ttft, count = await one_request(client, url, model, prompt, tokens, time.perf_counter())
                ttfts.append(ttft)
                generated += count
            except Exception as exc:  # counted, not raised: the benchmark reports failures
                failures.append(repr(exc))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, jobs) for jobs in plan))
        wall = time.perf_counter() - start
    return {
        "tokens_per_s": generated / wall,
        "ttft": ttfts or [float("nan")],
        "wall": wall,
        "failed": len(failures),
        "errors": failures[:3],
    }


async def adapter_load_times(url: str, adapter: Path, rounds: int) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(rounds):
            name = f"bench-load-{i}"
            start = time.perf_counter()
            response = await client.post(
                f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)}
            )
            times.append(time.perf_counter() - start)
            response.raise_for_status()
            (await client.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name})).raise_for_status()
    return times


async def swap_under_load(
    url: str, adapters: list[Path], clients: int, per_client: int, tokens: int, base: str
) -> dict:
    """Clients chat on the base and a steady adapter while other adapters are loaded and unloaded in a loop."""
    stop = asyncio.Event()
    swaps = 0

    async def swapper() -> None:
        nonlocal swaps
        async with httpx.AsyncClient(timeout=60) as client:
            while not stop.is_set():
                for i, path in enumerate(adapters):
                    name = f"swap-{i}"
                    (
                        await client.post(
                            f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
                        )
                    ).raise_for_status()
                    (
                        await client.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name})
                    ).raise_for_status()
                    swaps += 1

    task = asyncio.create_task(swapper())
    result = await run_clients(url, clients, per_client, tokens, [base, "steady"], seed=7)
    stop.set()
    await task
    result["swaps"] = swaps
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--load-rounds", type=int, default=20)
    args = parser.parse_args()
    model_dir = prepare(args)
    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-"))
    adapters = [
        make_lora_adapter(model_dir, work / f"adapter{i}", rank=8, seed=i, scale=4.0) for i in range(8)
    ]

    rows = []
    with HubProcess(model=model_dir, data_dir=work / "hub") as hub:
        base = httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]
        asyncio.run(run_clients(hub.url, 2, 1, 8, [base]))  # warm-up
        for clients in (1, 4, 16):
            n_requests = clients * args.requests_per_client
            ours = asyncio.run(run_clients(hub.url, clients, args.requests_per_client, args.tokens, [base]))
            theirs = baseline(model_dir, n_requests, args.tokens)
            rows.append((clients, ours, theirs))
        for i, path in enumerate(adapters):
            httpx.post(
                f"{hub.url}/v1/load_lora_adapter",
                json={"lora_name": f"mix{i}", "lora_path": str(path)},
                timeout=60,
            ).raise_for_status()
        one = asyncio.run(run_clients(hub.url, 16, args.requests_per_client, args.tokens, ["mix0"]))
        mixed = asyncio.run(
            run_clients(hub.url, 16, args.requests_per_client, args.tokens, [f"mix{i}" for i in range(8)])
        )
        load_times = asyncio.run(adapter_load_times(hub.url, adapters[0], args.load_rounds))
        httpx.post(
            f"{hub.url}/v1/load_lora_adapter",
            json={"lora_name": "steady", "lora_path": str(adapters[1])},
            timeout=60,
        ).raise_for_status()
        swapped = asyncio.run(
            swap_under_load(hub.url, adapters[2:6], 16, args.requests_per_client, args.tokens, base)
        )

    print(
        f"\ntunehub serving benchmark: {model_dir.name}, {args.tokens} new tokens per request, "
        f"{args.requests_per_client} requests per client, streaming over HTTP\n"
    )
    print(
        f"{'clients':>7} | {'tunehub tok/s':>13} | {'baseline tok/s':>14} | {'ratio':>6} | {'TTFT p50/p95 (s)':>17} | "
        f"{'baseline p50/p95':>17} | failed"
    )
    for clients, ours, theirs in rows:
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
        print(
            f"{clients:>7} | {ours['tokens_per_s']:>13.0f} | {theirs['tokens_per_s']:>14.0f} | {ratio:>5.2f}x | "
            f"{percentile(ours['ttft'], 0.5):>7.3f} / {percentile(ours['ttft'], 0.95):<7.3f} | "
            f"{percentile(theirs['ttft'], 0.5):>7.3f} / {percentile(theirs['ttft'], 0.95):<7.3f} | {ours['failed']}"
        )
    sixteen = rows[-1][1]["tokens_per_s"] / rows[-1][2]["tokens_per_s"]
    mix_ratio = mixed["tokens_per_s"] / one["tokens_per_s"]
    load_p50 = statistics.median(load_times) * 1000
    failed = swapped["failed"] + mixed["failed"] + one["failed"] + sum(r[1]["failed"] for r in rows)
    print()
    print(f"{'check':<44} | {'measured':>12} | target")
    print(f"{'tunehub / baseline at 16 clients':<44} | {sixteen:>11.2f}x | >= 4x")
    print(
        f"{'8 random adapters / one adapter (16 clients)':<44} | {mix_ratio:>11.2f}x | >= 0.7x   "
        f"({mixed['tokens_per_s']:.0f} vs {one['tokens_per_s']:.0f} tok/s)"
    )
    print(
        f"{'adapter load p50 (load through the API)':<44} | {load_p50:>9.1f} ms | < 100 ms  "
        f"(p95 {percentile(load_times, 0.95) * 1000:.1f} ms)"
    )
    print(
        f"{'failed requests while swapping adapters':<44} | {swapped['failed']:>12} | 0         "
        f"({swapped['swaps']} load+unload cycles)"
    )
    if failed:
        print("errors:", [r for r in (swapped, mixed, one) if r["failed"]][0]["errors"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
