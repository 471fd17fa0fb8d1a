"""Replica benchmark (`python -m bench.serving --replicas 2`): tunehub over N `tunehub engine` processes
(`--vllm-url` given N times, serving/replicas.py) against tunehub over one of them, same load, in one run.

    python -m bench.serving --replicas 2 [--tokens 64] [--requests-per-client 2] [--repeats 2]

Measures, with 16 streaming clients: total tokens/s through one replica and through N, interleaved and best
of --repeats each (the machine is shared). On one machine the replicas share its cores, so little gain is
expected: the ratio shows the routing overhead (target >= 0.9x). Then, with the 16 clients streaming without
pause, one replica is SIGKILLed: the time until the hub's /health shows it out of rotation, the time until the
first request sent after the kill has finished, and how many requests failed (only those that had already
streamed from it may fail; those that had not are retried on another replica).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import time
from pathlib import Path

import httpx

from bench.serving import best, one_request, prompt_for, run_clients
from tests.support.engine import EngineProcess
from tests.support.server import HubProcess

CLIENTS = 16


async def kill_under_load(hub: HubProcess, victim: EngineProcess, base: str, tokens: int) -> dict:
    """16 clients stream back to back; one replica is killed once they are all under way."""
    stop = asyncio.Event()
    done: list[tuple[float, float, int]] = []  # (sent, finished, completion tokens; 0: it failed)

    async def client(index: int) -> None:
        request = 0
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                _, count = await one_request(hub.url, base, prompt_for(index, request), tokens, sent)
            except Exception:
                count = 0
            done.append((sent, time.perf_counter(), count))
            request += 1

    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    async with httpx.AsyncClient(timeout=10) as http:
        while len(done) < CLIENTS:  # every client has finished a request: all are streaming
            await asyncio.sleep(0.05)
        killed = time.perf_counter()
        os.kill(victim.process.pid, signal.SIGKILL)
        out_of_rotation = None
        while out_of_rotation is None:
            replicas = (await http.get(hub.url + "/health")).json()["replicas"]
            if not next(r for r in replicas if r["url"] == victim.url)["healthy"]:
                out_of_rotation = time.perf_counter() - killed
            await asyncio.sleep(0.01)
        while not any(sent > killed and count for sent, _, count in done):
            await asyncio.sleep(0.01)
    first_after = min(end for sent, end, count in done if sent > killed and count) - killed
    await asyncio.sleep(2)  # the survivors keep serving
    stop.set()
    await asyncio.gather(*tasks)
    victim.process.wait(timeout=10)
    retried = len(re.findall(r"failed before the first token", hub.log_tail(2000)))
    return {
        "out_of_rotation_s": out_of_rotation,
        "first_after_s": first_after,
        "failed": sum(1 for sent, _, count in done if count == 0),
        "failed_after": sum(1 for sent, _, count in done if count == 0 and sent > killed),
        "requests": len(done),
        "retried": retried,
    }


def run(model_dir: Path, work: Path, args: argparse.Namespace) -> int:
    n = args.replicas
    engines = [EngineProcess(model=model_dir, log_path=work / f"engine{i}.log") for i in range(n)]
    hubs: list[HubProcess] = []
    try:
        for engine in engines:
            engine.start(timeout=300)
        for name, group in (("one", engines[:1]), ("many", engines)):
            urls = [arg for e in group for arg in ("--vllm-url", e.url)]
            hubs.append(
                HubProcess(
                    model=model_dir, data_dir=work / f"hub-{name}", extra_args=["--engine", "vllm", *urls]
                ).start(timeout=300)
            )
        one, many = hubs
        base = httpx.get(f"{one.url}/v1/models").json()["data"][0]["id"]
        for hub in hubs:
            asyncio.run(run_clients(hub.url, 4, 1, 8, [base]))  # warm-up
        runs: dict[str, list[dict]] = {"one": [], "many": []}
        for _ in range(args.repeats):
            for name, hub in (("one", one), ("many", many)):
                runs[name].append(
                    asyncio.run(run_clients(hub.url, CLIENTS, args.requests_per_client, args.tokens, [base]))
                )
        r1, rn = best(runs["one"]), best(runs["many"])
        one.stop()  # only the hub over N runs while a replica is killed
        kill = asyncio.run(kill_under_load(many, engines[-1], base, args.tokens))
    finally:
        for process in [*hubs, *engines]:
            process.stop()

    print(
        f"\ntunehub replica benchmark: {model_dir.name}, {CLIENTS} streaming clients, {args.tokens} new tokens "
        f"per request, {args.requests_per_client} requests per client, best of {args.repeats}; {n} `tunehub "
        f"engine` processes on this machine's {os.cpu_count()} cores"
    )
    print(f"{'hub over':>12} | {'tok/s':>8} | {'TTFT p50 (s)':>12} | failed")
    for label, r in (("1 replica", r1), (f"{n} replicas", rn)):
        ttft = sorted(r["ttft"])[len(r["ttft"]) // 2]
        print(f"{label:>12} | {r['tokens_per_s']:>8.1f} | {ttft:>12.3f} | {r['failed']}")
    ratio = rn["tokens_per_s"] / r1["tokens_per_s"]
    rows = [
        (f"{n} replicas / 1 replica, {CLIENTS} clients", f"{ratio:.2f}x", ">= 0.9x (routing overhead)"),
        ("killed replica out of rotation", f"{kill['out_of_rotation_s'] * 1000:.0f} ms", "(kill to /health)"),
        ("first request sent after the kill done", f"{kill['first_after_s']:.2f} s", "(info)"),
        (
            "requests failed around the kill",
            str(kill["failed"]),
            f"only streams already under way on it ({kill['requests']} requests, "
            f"{kill['failed_after']} sent after the kill failed, {kill['retried']} retried)",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'check':<{width}} | {'measured':>9} | target")
    for name, measured, target in rows:
        print(f"{name:<{width}} | {measured:>9} | {target}")
    return 0
