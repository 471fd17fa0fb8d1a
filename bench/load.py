"""Load benchmark: concurrent clients chat (streaming) and vote through the API; no 5xx, no vote lost.

    python -m bench.load [--model DIR] [--clients 32] [--seconds 60] [--max-tokens 16]

Starts a real `tunehub serve` on 127.0.0.1 with one rater API key per client. Each client, on its own
connection, streams a chat completion, then votes thumbs up or down on the answer it got, then again, for
`--seconds`. Afterwards every vote the server acknowledged (200 with a vote id) is looked up in the SQLite
file. It prints requests/s, latency percentiles per kind of request (for a streamed chat: until `[DONE]`),
status counts, 5xx (target 0) and lost votes (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import add_model_arguments, prepare
from tests.support.server import HubProcess

QUESTIONS = [
    "What is 12 + 7?",
    "Convert 3 km to m.",
    "What is the capital of France?",
    "Reverse the word cat.",
]


async def client(url: str, key: str, seed: int, deadline: float, max_tokens: int, model: str) -> dict:
    rng = random.Random(seed)
    record: dict = {"chat": [], "vote": [], "statuses": Counter(), "votes": [], "errors": []}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        while time.monotonic() < deadline:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
                "max_tokens": max_tokens,
                "stream": True,
                "temperature": 0.8,
            }
            started = time.perf_counter()
            response_id = None
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    record["statuses"][response.status_code] += 1
                    if response.status_code != 200:
                        record["errors"].append((response.status_code, (await response.aread())[:200]))
                        continue
                    async for line in response.aiter_lines():
                        if line.startswith("data: {") and response_id is None:
                            response_id = json.loads(line[6:])["id"]
            except httpx.HTTPError as exc:
                record["statuses"]["connection error"] += 1
                record["errors"].append(("chat", repr(exc)[:200]))
                continue
            record["chat"].append(time.perf_counter() - started)

            vote = {
                "type": "thumbs",
                "generation": {"generation_id": response_id},
                "value": rng.choice(["up", "down"]),
            }
            started = time.perf_counter()
            try:
                answer = await http.post("/v1/feedback", json=vote)
            except httpx.HTTPError as exc:
                record["statuses"]["connection error"] += 1
                record["errors"].append(("vote", repr(exc)[:200]))
                continue
            record["vote"].append(time.perf_counter() - started)
            record["statuses"][answer.status_code] += 1
            if answer.status_code == 200:
                record["votes"].append(answer.json()["id"])
            else:
                record["errors"].append((answer.status_code, answer.text[:200]))
    return record


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100)
    return f"{q[49]:.3f} / {q[94]:.3f} / {q[98]:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer")
    args = parser.parse_args()
    model_dir = prepare(args)
    from feedback.store import Store

    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-load-"))
    with Store(work / "feedback.db") as store:
        keys = []
        for i in range(args.clients):
            store.add_rater(f"load-{i}")
            keys.append(store.create_api_key(f"load-{i}")[1])

    with HubProcess(model=model_dir, data_dir=work, extra_args=["--served-model-name", "demo"]) as hub:

        async def run() -> list[dict]:
            deadline = time.monotonic() + args.seconds
            return await asyncio.gather(
                *(client(hub.url, key, i, deadline, args.max_tokens, "demo") for i, key in enumerate(keys))
            )

        started = time.perf_counter()
        records = asyncio.run(run())
        elapsed = time.perf_counter() - started
        alive = httpx.get(f"{hub.url}/health", timeout=10).status_code

    statuses = sum((r["statuses"] for r in records), Counter())
    chats = [t for r in records for t in r["chat"]]
    votes = [t for r in records for t in r["vote"]]
    acknowledged = [v for r in records for v in r["votes"]]
    with Store(work / "feedback.db") as store:
        stored = {
            v.id for i in range(args.clients) for v in store.list_votes(f"load-{i}", include_replaced=True)
        }
    lost = len(set(acknowledged) - stored)
    server_errors = sum(n for status, n in statuses.items() if isinstance(status, int) and status >= 500)
    requests = sum(statuses.values())

    print(
        f"\ntunehub load benchmark ({os.cpu_count()} CPUs): {args.clients} clients for {elapsed:.0f} s, "
        f"{args.max_tokens} tokens per answer, database in {work}\n"
    )
    print(f"{'measure':<38} | {'value':>24} | target")
    print(f"{'requests/s (chats + votes)':<38} | {requests / elapsed:>24.1f} |")
    print(f"{'streamed chats':<38} | {len(chats):>24} |")
    print(f"{'chat latency p50 / p95 / p99 (s)':<38} | {percentiles(chats):>24} |")
    print(f"{'votes acknowledged':<38} | {len(acknowledged):>24} |")
    print(f"{'vote latency p50 / p95 / p99 (s)':<38} | {percentiles(votes):>24} |")
    print(f"{'statuses':<38} | {', '.join(f'{k}: {v}' for k, v in sorted(statuses.items(), key=str)):>24} |")
    print(f"{'5xx answers':<38} | {server_errors:>24} | 0")
    print(f"{'votes lost (acknowledged, not stored)':<38} | {lost:>24} | 0")
    print(f"{'server healthy afterwards':<38} | {'yes' if alive == 200 else 'NO':>24} | yes")
    for error in [e for r in records for e in r["errors"]][:5]:
        print("  e.g.", error)
    return 0 if server_errors == 0 and lost == 0 and alive == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
