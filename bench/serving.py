"""Serving benchmark: tunehub's HTTP API at 1, 4 and 16 streaming clients against what the machine can do.

    python -m bench.serving [--model DIR|FILE.gguf|smollm2] [--tokens 64] [--requests-per-client 2]
                            [--dtypes float32,auto] [--repeats 2] [--sequential-requests 2] [--load-rounds 20]
                            [--threads N] [--no-adapters] [--no-job]
    python -m bench.serving --replicas 2 [--tokens 64] [--requests-per-client 2] [--repeats 2]

With --replicas N it measures tunehub over N `tunehub engine` processes against one instead (bench/replicas.py).

Starts a real `tunehub serve` on 127.0.0.1 once per dtype (`--dtype float32`, then `--dtype auto`, the
default a user gets; every other engine setting left at its default) and measures, in the same run:
  * total tokens/s and p50/p95 time to first token for 1, 4 and 16 concurrent streaming clients, each request
    asking for exactly `--tokens` new tokens (greedy, ignore_eos);
  * the baselines, in this process while the hub is idle, same model, dtype, prompts and lengths: one
    `model.generate` per request one after another (what a quick demo does), and one raw batched
    `model.generate` of the 16 clients' prompts (left-padded, greedy, min_new_tokens = max_new_tokens; the
    best of 1 thread, powers of two, torch's default and the engine's count), the ceiling of this machine
    for that model;
  * one client's decode speed against the memory-bandwidth limit: the bytes of weights one decode step reads
    over the read bandwidth measured here (the best of a few sums of a tensor far larger than the caches);
  * under the auto dtype: 8 LoRA adapters chosen at random per request against every request on one
    adapter, adapter load latency (load + unload through the API), and failed requests while adapters are
    loaded and unloaded under load;
  * one client while the hub trains: an SFT LoRA job submitted through `POST /v1/jobs` with the Train tab's
    defaults (its step cap raised so that it outlasts the measurement; cancelled after), measured once it
    has taken a step (`--no-job` skips it). With no `--threads` the engine then leaves the job a core.
Each row is measured --repeats times, tunehub and the baselines interleaved, and the best run is shown (the
machine is shared; a slow run is someone else's load). It prints a table per dtype and one of checks.
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
CLIENTS = (1, 4, 16)
CEILING_TARGET = {"demo": 0.8, "real": 0.95}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prompt_for(client: int, request: int) -> str:
    """Client c's r-th prompt: the 16 clients' first requests are the ceiling batch's prompts."""
    return PROMPTS[(client + request) % len(PROMPTS)]


# ----- in-process baselines: sequential and one raw batched model.generate -------------------------------


class Baselines:
    """The model loaded the way `tunehub serve --dtype` loads it, run with plain `model.generate`."""

    def __init__(self, model_dir: Path, dtype: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from serving.loader import pick_dtype
        from serving.model_source import strip_gguf_quantization

        self.torch_dtype, _ = pick_dtype(dtype, "cpu")
        config = AutoConfig.from_pretrained(str(model_dir))
        strip_gguf_quantization(config)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), config=config, dtype=self.torch_dtype
        ).eval()
        self.torch = torch

    def weight_bytes_per_token(self) -> int:
        """Bytes one decode step reads: every weight once (a tied embedding counts once, as the LM head
        reads all of it; the embedding lookup reads one row)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def _ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return list(ids["input_ids"] if hasattr(ids, "input_ids") else ids)

    def _generate(self, prompts: list[list[int]], tokens: int) -> int:
        torch = self.torch
        length = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (length - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        return (out.shape[1] - length) * len(prompts)

    def sequential(self, n_requests: int, tokens: int) -> float:
        """tok/s of one `model.generate` per request, one after another."""
        self._generate([self._ids(PROMPTS[0])], 4)  # warm-up
        generated, start = 0, time.perf_counter()
        for i in range(n_requests):
            generated += self._generate([self._ids(prompt_for(i, 0))], tokens)
        return generated / (time.perf_counter() - start)

    def batched(self, clients: int, tokens: int, engine_threads: int | None = None) -> float:
        """tok/s of one `model.generate` over the clients' first prompts together, left-padded: the best of
        1 thread, the powers of two up to torch's default count, that count and the engine's, so that the
        ceiling stays the best this machine does (a tiny model decodes fastest on one thread)."""
        from serving.cpu_share import usable_cores

        torch = self.torch
        prompts = [self._ids(prompt_for(c, 0)) for c in range(clients)]
        default, best_rate = torch.get_num_threads(), 0.0
        counts = {default, engine_threads or usable_cores()} | {1 << i for i in range(default.bit_length())}
        try:
            for threads in sorted(counts):
                torch.set_num_threads(threads)
                self._generate(prompts, 4)  # warm-up
                start = time.perf_counter()
                generated = self._generate(prompts, tokens)
                best_rate = max(best_rate, generated / (time.perf_counter() - start))
        finally:
            torch.set_num_threads(default)
        return best_rate


def read_bandwidth(size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s of reading memory: the best of a few sums of a float32 tensor far larger than the caches."""
    import torch

    data = torch.ones(size_bytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return size_bytes / best


# ----- tunehub through HTTP --------------------------------------------------------------------------------


async def one_request(url: str, model: str, prompt: str, tokens: int, sent: float) -> tuple[float, int]:
    """One streamed chat completion over its own connection; returns (time to first text, completion tokens).

    A bare HTTP/1.1 client: the clients share the server's 2 cores, and a full HTTP client's per-event parsing
    (httpx: about 0.1 ms of CPU per token) would take those cores from the server it measures. Only the
    events before the first text and the usage event are parsed as JSON."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        status = (await reader.readline()).split()
        headers = (await reader.readuntil(b"\r\n\r\n")).lower()
        if status[1] != b"200" or b"transfer-encoding: chunked" not in headers:
            raise RuntimeError(f"HTTP {status[1].decode()}: {(await reader.read(300))!r}")
        first, completion, pending = None, 0, b""
        while size := int((await reader.readline()).split(b";")[0], 16):  # chunked transfer encoding
            pending += await reader.readexactly(size)
            await reader.readexactly(2)
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if first is None and b'"content":"' in event and b'"content":""' not in event:
                    first = time.perf_counter() - sent
                if b'"usage":{' in event:
                    completion = json.loads(event.removeprefix(b"data: "))["usage"]["completion_tokens"]
    finally:
        writer.close()
    return (first if first is not None else time.perf_counter() - sent), completion


async def run_clients(
    url: str, clients: int, per_client: int, tokens: int, models: list[str], seed: int = 0
) -> dict:
    rng = random.Random(seed)
    plan = [[(rng.choice(models), prompt_for(c, r)) for r in range(per_client)] for c in range(clients)]
    ttfts, failures, generated = [], [], 0

    async def client_loop(jobs) -> None:
        nonlocal generated
        for model, prompt in jobs:
            try:
                ttft, count = await one_request(url, model, prompt, tokens, time.perf_counter())
                ttfts.append(ttft)
                generated += count
            except Exception as exc:  # counted, not raised: the benchmark reports failures
                failures.append(repr(exc))

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(jobs) for jobs in plan))
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


def while_a_job_trains(url: str, work: Path, tokens: int, per_client: int, base: str) -> dict:
    """One client while an SFT LoRA job of the hub trains on the served base, measured once it has made
    progress (its first step); the job is cancelled and gone before this returns."""
    data = work / "sft-rows.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i, prompt in enumerate(PROMPTS * 8)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    body = {
        "stage": "sft",
        "method": "lora",
        "data": str(data),
        "name": "bench-beside",
        "params": {"max_steps": 10_000},
    }
    job = httpx.post(f"{url}/v1/jobs", json=body, timeout=60).raise_for_status().json()

    def current() -> dict:
        return httpx.get(f"{url}/v1/jobs/{job['id']}", timeout=60).raise_for_status().json()

    deadline = time.monotonic() + 600
    while (state := current())["status"] in ("queued", "running") and not state["progress"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job['id']} took no step in 600 s: {state}")
        time.sleep(1)
    if state["status"] != "running":
        raise RuntimeError(
            f"job {job['id']} ended before the measurement: {state['status']} {state['error']}"
        )
    try:
        return asyncio.run(run_clients(url, 1, per_client, tokens, [base]))
    finally:
        httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", timeout=60).raise_for_status()
        while current()["status"] in ("queued", "running") and time.monotonic() < deadline + 120:
            time.sleep(1)


def load_adapter(url: str, name: str, path: Path) -> None:
    httpx.post(
        f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60
    ).raise_for_status()


# ----- one dtype: the hub, then the baselines ---------------------------------------------------------------


def best(runs: list[dict]) -> dict:
    """The least disturbed of repeated runs (the machine is shared: slow outliers are other people's work)."""
    return max(runs, key=lambda run: run["tokens_per_s"])


def measure_dtype(
    model_dir: Path, dtype: str, work: Path, args: argparse.Namespace, adapters: list[Path] | None
) -> dict:
    """tunehub and the baselines, interleaved (each repeat measures every one of them once), best of the
    repeats for each: a load that comes and goes on the machine then weighs on both sides alike."""
    per_client, repeats = args.requests_per_client, args.repeats
    baselines = Baselines(model_dir, dtype)  # idle while the hub runs, and the hub is idle while it runs
    result: dict = {
        "dtype": dtype,
        "torch_dtype": str(baselines.torch_dtype).removeprefix("torch."),
        "weight_bytes": baselines.weight_bytes_per_token(),
    }
    runs: dict[int, list[dict]] = {clients: [] for clients in CLIENTS}
    sequential, ceiling = [], []
    extra = ["--dtype", dtype] + (["--threads", str(args.threads)] if args.threads else [])
    with HubProcess(model=model_dir, data_dir=work / f"hub-{dtype}", extra_args=extra) as hub:
        base = httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]
        asyncio.run(run_clients(hub.url, 4, 1, 8, [base]))  # warm-up
        for _ in range(repeats):
            for clients in CLIENTS:
                runs[clients].append(
                    asyncio.run(run_clients(hub.url, clients, per_client, args.tokens, [base]))
                )
            sequential.append(baselines.sequential(args.sequential_requests, args.tokens))
            ceiling.append(baselines.batched(max(CLIENTS), args.tokens, args.threads))
        result["clients"] = {clients: best(r) for clients, r in runs.items()}
        if not args.no_job:
            result["beside_job"] = while_a_job_trains(hub.url, work, args.tokens, per_client, base)
        result["sequential"], result["ceiling"] = max(sequential), max(ceiling)
        if adapters:
            for i, path in enumerate(adapters):
                load_adapter(hub.url, f"mix{i}", path)
            one, mixed = [], []
            for _ in range(repeats):
                one.append(asyncio.run(run_clients(hub.url, 16, per_client, args.tokens, ["mix0"])))
                mixed.append(
                    asyncio.run(
                        run_clients(hub.url, 16, per_client, args.tokens, [f"mix{i}" for i in range(8)])
                    )
                )
            result["one"], result["mixed"] = best(one), best(mixed)
            result["load_times"] = asyncio.run(adapter_load_times(hub.url, adapters[0], args.load_rounds))
            load_adapter(hub.url, "steady", adapters[1])
            result["swapped"] = asyncio.run(
                swap_under_load(hub.url, adapters[2:6], 16, per_client, args.tokens, base)
            )
    return result


# ----- report ----------------------------------------------------------------------------------------------


def print_dtype_table(r: dict, bandwidth: float) -> None:
    print(
        f"\n--dtype {r['dtype']} ({r['torch_dtype']}): sequential model.generate {r['sequential']:.1f} tok/s, "
        f"one raw batched model.generate of {max(CLIENTS)} prompts {r['ceiling']:.1f} tok/s (ceiling), "
        f"bandwidth limit {bandwidth / r['weight_bytes']:.1f} tok/s ({r['weight_bytes'] / 1e6:.0f} MB/token)"
    )
    print(
        f"{'clients':>7} | {'tunehub tok/s':>13} | {'/ sequential':>12} | {'/ ceiling':>9} | "
        f"{'TTFT p50 / p95 (s)':>19} | failed"
    )
    for clients, ours in r["clients"].items():
        print(
            f"{clients:>7} | {ours['tokens_per_s']:>13.1f} | {ours['tokens_per_s'] / r['sequential']:>11.2f}x | "
            f"{ours['tokens_per_s'] / r['ceiling']:>8.2f}x | "
            f"{percentile(ours['ttft'], 0.5):>8.3f} / {percentile(ours['ttft'], 0.95):<8.3f} | {ours['failed']}"
        )


def print_checks(results: dict[str, dict], bandwidth: float, kind: str) -> None:
    rows: list[tuple[str, str, str]] = []

    def check(name: str, measured: str, target: str) -> None:
        rows.append((name, measured, target))

    for dtype, r in results.items():
        top = r["clients"][max(CLIENTS)]["tokens_per_s"]
        check(
            f"16 clients / raw batched ceiling [{dtype}]",
            f"{top / r['ceiling']:.2f}x",
            f">= {CEILING_TARGET[kind]}x ({top:.1f} vs {r['ceiling']:.1f} tok/s)",
        )
        check(f"16 clients / sequential generate [{dtype}]", f"{top / r['sequential']:.2f}x", "(info)")
        limit = bandwidth / r["weight_bytes"]
        one = r["clients"][1]["tokens_per_s"]
        check(
            f"1 client / bandwidth limit [{dtype}]",
            f"{one / limit:.0%}",
            f">= 40% ({one:.1f} of {limit:.1f} tok/s; sequential generate {r['sequential'] / limit:.0%})",
        )
        if "beside_job" in r:
            training = r["beside_job"]["tokens_per_s"]
            check(
                f"1 client while an SFT job trains [{dtype}]",
                f"{training:.1f}",
                f"(info: tok/s, {training / one:.0%} of 1 client alone)",
            )
    if "auto" in results and "float32" in results:
        auto, f32 = results["auto"], results["float32"]
        top = {d: results[d]["clients"][max(CLIENTS)]["tokens_per_s"] for d in ("auto", "float32")}
        check(
            f"auto ({auto['torch_dtype']}) / float32, tunehub 16 clients",
            f"{top['auto'] / top['float32']:.2f}x",
            f">= 1.5x (raw ceiling {auto['ceiling'] / f32['ceiling']:.2f}x)",
        )
        one = {d: results[d]["clients"][1]["tokens_per_s"] for d in ("auto", "float32")}
        check(
            f"auto ({auto['torch_dtype']}) / float32, tunehub 1 client",
            f"{one['auto'] / one['float32']:.2f}x",
            f"(info; sequential generate {auto['sequential'] / f32['sequential']:.2f}x)",
        )
    with_adapters = next((r for r in results.values() if "mixed" in r), None)
    if with_adapters is not None:
        r = with_adapters
        mixed, one = r["mixed"]["tokens_per_s"], r["one"]["tokens_per_s"]
        check(
            f"8 random adapters / one adapter, 16 clients [{r['dtype']}]",
            f"{mixed / one:.2f}x",
            f">= 0.9x ({mixed:.1f} vs {one:.1f} tok/s)",
        )
        times = r["load_times"]
        check(
            "adapter load p50 (load through the API)",
            f"{statistics.median(times) * 1000:.1f} ms",
            f"< 100 ms (p95 {percentile(times, 0.95) * 1000:.1f} ms)",
        )
        check(
            "failed requests while swapping adapters",
            str(r["swapped"]["failed"]),
            f"0 ({r['swapped']['swaps']} load+unload cycles)",
        )
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'check':<{width}} | {'measured':>9} | target")
    for name, measured, target in rows:
        print(f"{name:<{width}} | {measured:>9} | {target}")


def resolve_model(args: argparse.Namespace) -> Path:
    """--model as a directory, a .gguf file (converted once, as `tunehub serve` does) or `smollm2`."""
    given = prepare(args)  # also makes the environment quiet and offline
    if args.model == "smollm2":
        from tests.support.real_model import smollm2_directory

        return smollm2_directory()
    if args.model and args.model.endswith(".gguf"):
        from serving.model_source import resolve_model_source
        from tests.support.real_model import MODELS

        return Path(resolve_model_source(args.model, MODELS / "converted").path)
    return given


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument(
        "--sequential-requests", type=int, default=2, help="requests the sequential baseline runs per repeat"
    )
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each row; the best is shown")
    parser.add_argument(
        "--dtypes", default="float32,auto", help="comma-separated `tunehub serve --dtype` values"
    )
    parser.add_argument("--load-rounds", type=int, default=20)
    parser.add_argument("--no-adapters", action="store_true", help="skip the adapter rows")
    parser.add_argument("--no-job", action="store_true", help="skip one client while a job trains")
    parser.add_argument(
        "--threads", type=int, default=None, help="`tunehub serve --threads` (default: serve's own)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="N > 1: tunehub over N `tunehub engine` replicas against one, and a replica killed under load",
    )
    args = parser.parse_args()
    model_dir = resolve_model(args)
    if args.replicas > 1:
        from bench.replicas import run

        return run(model_dir, Path(tempfile.mkdtemp(prefix="tunehub-bench-")), args)
    kind = "demo" if (model_dir / "tunehub_demo.json").is_file() else "real"
    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-"))
    adapters = None
    if not args.no_adapters:
        adapters = [
            make_lora_adapter(model_dir, work / f"adapter{i}", rank=8, seed=i, scale=4.0) for i in range(8)
        ]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bandwidth = read_bandwidth()
    results = {
        dtype: measure_dtype(model_dir, dtype, work, args, adapters if dtype == dtypes[-1] else None)
        for dtype in dtypes
    }
    bandwidth = max(bandwidth, read_bandwidth())  # measured before and after: the better of the two

    print(
        f"\ntunehub serving benchmark: {model_dir.name}, {args.tokens} new tokens per request, "
        f"{args.requests_per_client} requests per client, streaming over HTTP"
        f"{f', --threads {args.threads}' if args.threads else ''}; "
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    for r in results.values():
        print_dtype_table(r, bandwidth)
    print_checks(results, bandwidth, kind)
    failed = [
        x
        for r in results.values()
        for x in [
            *r["clients"].values(),
            *(r[k] for k in ("one", "mixed", "swapped", "beside_job") if k in r),
        ]
        if x["failed"]
    ]
    if failed:
        print("errors:", failed[0]["errors"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
