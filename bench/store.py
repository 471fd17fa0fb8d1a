"""Feedback store benchmark: votes/s through the HTTP API against direct Store calls, and the leaderboard.

    python -m bench.store [--model DIR] [--votes 100000] [--http-votes 1000] [--clients 8] [--board-votes N]

In one run:
  * baseline: `--votes` pairwise votes (default 100,000) written by direct `Store.add_pairwise` calls from one
    thread, on 8 models' answers to 50 prompts, with a skill per model so the ratings mean something;
  * the leaderboard over those votes (Bradley-Terry with 200 bootstrap rounds), computed directly and
    through GET /v1/leaderboard of a real `tunehub serve` on the same database;
  * triage (issue 16): filtered pages of 50 through GET /v1/feedback over those votes (a tenth carry a
    reason), newest first by cursor, five pages deep for each of several filters (model, model + value,
    reason, model + reason, rater, time range, none); p50/p95 per request;
  * the leaderboard over `--board-votes` votes (default 1,000,000, Chatbot Arena's scale) with its 200
    bootstrap rounds, on a second database filled by bulk SQL inserts (a shortcut: writing is measured above);
  * votes/s through POST /v1/feedback with `--clients` concurrent clients (default 8), each a rater with
    its own API key on its own keep-alive connection, each posting `--http-votes` pairwise votes one after
    another; then every vote is looked for in the store (zero lost) and every answer must have been 200
    with a fresh vote id. Clients and server share the machine's cores, so the clients are kept lean.
It prints a table; the targets are in the last column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import add_model_arguments, prepare
from tests.support.server import HubProcess

BASE = "base"
MODELS = [BASE] + [f"adapter-{i}" for i in range(1, 8)]
SKILL = {m: 0.25 * i for i, m in enumerate(MODELS)}  # log-odds; adapter-7 is the strongest
REASONS = ["too long", "wrong", "unhelpful", "bad format", "helpful"]
TRIAGE_FILTERS = [
    {},
    {"model": "adapter-3"},
    {"model": "adapter-3", "value": "a"},
    {"reason": "too_long"},
    {"model": "adapter-5", "reason": "bad_format"},
    {"rater": "r7", "type": "pairwise"},
    {"since": "2000-01-01", "until": "2999-01-01", "value": "tie"},
]


def outcome(rng: random.Random, a: str, b: str) -> str:
    r = rng.random()
    if r < 0.05:
        return "both_bad"
    if r < 0.15:
        return "tie"
    p_a = 1 / (1 + math.exp(SKILL[b] - SKILL[a]))
    return "a" if rng.random() < p_a else "b"


def answers(store, prompts: int, tag: str) -> list[tuple[str, str]]:
    """Every model's answer to each prompt; returns all same-prompt pairs of generation ids."""
    pairs = []
    for p in range(prompts):
        prompt = [{"role": "user", "content": f"{tag} question {p}"}]
        ids = [
            store.add_generation(
                prompt=prompt, model=m, text=f"{m} says {p}", response_id=f"chatcmpl-{tag}{p}{m}"
            ).id
            for m in MODELS
        ]
        pairs += [(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))]
    return pairs


def direct_votes(store, pairs: list[tuple[str, str]], n_votes: int, rng: random.Random) -> float:
    """Write n_votes pairwise votes from one thread; returns votes/s. Each rater votes once per pair."""
    model_of = {g.id: g.model for g in store.list_generations()}
    start = time.perf_counter()
    for i in range(n_votes):
        a, b = pairs[i % len(pairs)]
        tags = [rng.choice(REASONS)] if rng.random() < 0.1 else []  # a tenth give a reason (triage)
        store.add_pairwise(
            a, b, outcome(rng, model_of[a], model_of[b]), rater=f"r{i // len(pairs)}", source="api", tags=tags
        )
    return n_votes / (time.perf_counter() - start)


async def post_votes(port: int, key: str, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    """POST each body on one keep-alive connection, one after another; returns (status, answer) of each.

    A shortcut on purpose: a plain HTTP/1.1 client on asyncio streams, because the clients share the
    machine's cores with the server and httpx would spend more of them per request than the server does."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /v1/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    head += "Content-Type: application/json\r\n"
    answers = []
    try:
        for body in bodies:
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")
            )
            answers.append((int(lines[0].split()[1]), await reader.readexactly(length)))
    finally:
        writer.close()
    return answers


async def http_votes(port: int, keys: list[str], pairs: list[tuple[str, str]], per_client: int) -> dict:
    """Each client posts per_client pairwise votes one after another; all clients at once."""
    rng = random.Random(1)
    bodies = [
        json.dumps(
            {
                "type": "pairwise",
                "a": {"generation_id": a},
                "b": {"generation_id": b},
                "winner": rng.choice(["a", "b", "tie", "both_bad"]),
            }
        ).encode()
        for a, b in pairs[:per_client]
    ]
    start = time.perf_counter()
    results = await asyncio.gather(*(post_votes(port, key, bodies) for key in keys))
    elapsed = time.perf_counter() - start
    answers = [answer for client in results for answer in client]
    return {
        "elapsed": elapsed,
        "statuses": [status for status, _ in answers],
        "vote_ids": [json.loads(body)["id"] for status, body in answers if status == 200],
        "errors": [body[:200] for status, body in answers if status != 200],
    }


def triage_latencies(url: str, filters: list[dict], pages: int = 5) -> list[float]:
    """Seconds per GET /v1/feedback page of 50: each filter's first `pages` pages, following next_cursor."""
    seconds = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.get("/v1/feedback", params={"limit": 50}).raise_for_status()  # warm-up
        for params in filters:
            cursor = None
            for _ in range(pages):
                query = {**params, "limit": 50, **({"cursor": cursor} if cursor else {})}
                start = time.perf_counter()
                response = client.get("/v1/feedback", params=query)
                seconds.append(time.perf_counter() - start)
                response.raise_for_status()
                page = response.json()
                if len(page["data"]) != 50 and page["has_more"]:
                    raise RuntimeError(f"a short page with more to come for {params}")
                cursor = page["next_cursor"]
                if cursor is None:
                    break
    return seconds


def board_of_a_million(work: Path, n_votes: int) -> tuple[float, object]:
    """The leaderboard (200 bootstrap rounds) over n_votes pairwise votes; returns (median seconds, board).

    Shortcut: the votes go in by bulk SQL on a second database, since writing is measured elsewhere; each row
    is what Store.add_pairwise writes (the models beside the vote, one active vote per rater and pair)."""
    import sqlite3

    from feedback.store import Store
    from hub.feedback_service import FeedbackService

    path = work / "board" / "feedback.db"
    store = Store(path)
    pairs = answers(store, 50, "million")
    model_of = {g.id: g.model for g in store.list_generations()}
    conversation = store.get_generation(pairs[0][0]).conversation_id
    store.close()
    rng = random.Random(2)
    conn = sqlite3.connect(path)
    rows = []
    for i in range(n_votes):
        a, b = pairs[i % len(pairs)]
        rows.append(
            ("pairwise", f"r{i // len(pairs)}", f"{a}|{b}", a, json.dumps([a, b]), outcome(rng, model_of[a],
             model_of[b]), "[]", conversation, "api", f"2026-01-01T00:00:00.{i:06d}Z"[:27], 1, model_of[a],
             model_of[b])
        )  # fmt: skip
    conn.executemany(
        "INSERT INTO votes (kind, rater, item_key, generation_id, generation_ids, value, tags, conversation_id, "
        "source, created_at, active, model_a, model_b) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()
    with Store(path) as store:
        service = FeedbackService(store, anchor=lambda: BASE)
        board = service.leaderboard()
        return timed(service.leaderboard), board


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--votes", type=int, default=100_000, help="votes written directly (and on the board)"
    )
    parser.add_argument("--http-votes", type=int, default=1000, help="votes per HTTP client")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--board-votes", type=int, default=1_000_000, help="votes on the large leaderboard (0: skip it)"
    )
    args = parser.parse_args()
    model_dir = prepare(args)
    from feedback.store import Store
    from hub.feedback_service import FeedbackService

    work = Path(tempfile.mkdtemp(prefix="tunehub-bench-store-"))
    rng = random.Random(0)

    store = Store(work / "hub" / "feedback.db")
    board_pairs = answers(store, 50, "board")
    direct_rate = direct_votes(store, board_pairs, args.votes, rng)
    service = FeedbackService(store, anchor=lambda: BASE)
    board = service.leaderboard()
    direct_board_s = timed(service.leaderboard)

    http_pairs = answers(store, math.ceil(args.http_votes / 28), "http")
    keys = []
    for i in range(args.clients + 1):
        store.add_rater(f"client-{i}")
        keys.append(store.create_api_key(f"client-{i}")[1])
    store.close()

    with HubProcess(model=model_dir, data_dir=work / "hub", extra_args=["--served-model-name", BASE]) as hub:
        http_board_s = timed(lambda: httpx.get(f"{hub.url}/v1/leaderboard", timeout=120).raise_for_status())
        asyncio.run(http_votes(hub.port, keys[-1:], http_pairs, 100))  # warm-up, by a rater of its own
        storm = asyncio.run(http_votes(hub.port, keys[:-1], http_pairs, args.http_votes))
        triage = sorted(triage_latencies(hub.url, TRIAGE_FILTERS))
    p50 = triage[len(triage) // 2]
    p95 = triage[min(len(triage) - 1, math.ceil(len(triage) * 0.95) - 1)]
    if args.board_votes:
        million_s, million = board_of_a_million(work, args.board_votes)

    with Store(work / "hub" / "feedback.db") as store:
        stored = sum(len(store.list_votes(f"client-{i}", kind="pairwise")) for i in range(args.clients))
    sent = args.clients * args.http_votes
    ok = sum(1 for s in storm["statuses"] if s == 200)
    fresh = len(set(storm["vote_ids"])) == ok
    lost = sent - stored
    http_rate = sent / storm["elapsed"]

    print(f"\ntunehub feedback store benchmark ({os.cpu_count()} CPUs), database in {work}\n")
    print(f"{'check':<52} | {'measured':>14} | target")
    print(f"{'votes/s direct Store.add_pairwise, 1 thread (baseline)':<52} | {direct_rate:>14.0f} |")
    print(
        f"{f'votes/s POST /v1/feedback, {args.clients} clients':<52} | {http_rate:>14.0f} | >= 1000   "
        f"({http_rate / direct_rate:.2f}x the baseline; {sent} votes in {storm['elapsed']:.1f} s)"
    )
    print(
        f"{'votes lost (sent - stored)':<52} | {lost:>14} | 0         ({ok} of {sent} answered 200"
        f"{', each with its own vote id' if fresh else ', SOME VOTE IDS REPEATED'})"
    )
    print(f"{f'leaderboard over {args.votes:,} votes, direct':<52} | {direct_board_s:>12.2f} s | <= 2 s")
    print(f"{f'GET /v1/leaderboard over {args.votes:,} votes':<52} | {http_board_s:>12.2f} s | <= 2 s")
    print(
        f"{'GET /v1/feedback page of 50, filtered, p50':<52} | {p50 * 1000:>11.1f} ms |"
        f"           ({len(triage)} pages over {args.votes:,} votes, {len(TRIAGE_FILTERS)} filters)"
    )
    print(
        f"{'GET /v1/feedback page of 50, filtered, p95':<52} | {p95 * 1000:>11.1f} ms | < 100 ms  "
        f"({p95 * 1000 / 100:.2f}x the target)"
    )
    if args.board_votes:
        print(
            f"{f'leaderboard over {args.board_votes:,} votes, 200 rounds':<52} | {million_s:>12.2f} s | < 2 s     "
            f"({million_s / 2:.2f}x the target; {million.n_votes:,} votes counted)"
        )
    top = ", ".join(f"{r.model} {r.rating:.0f} [{r.lower:.0f}, {r.upper:.0f}]" for r in board.ratings[:3])
    print(f"\nboard (true skill rises with the adapter number): {top}, ...")
    if storm["errors"]:
        print("errors:", storm["errors"][:3], file=sys.stderr)
    return 0 if lost == 0 and ok == sent and fresh else 1


if __name__ == "__main__":
    sys.exit(main())
