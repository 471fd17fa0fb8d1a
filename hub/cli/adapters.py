"""`tunehub adapters`: registered adapter versions in the data dir's store.

tunehub adapters list [--status STATUS] [--data-dir DIR]
tunehub adapters show ADAPTER [--data-dir DIR]        lineage as JSON: job, dataset snapshot, votes, parents,
                                                     and its stored regression replay's summary with the
                                                     per-prompt flips against the promoted model and the base
tunehub adapters promote ADAPTER [--override] [--data-dir DIR]
                                                     the version promoted before it is retired; refused
                                                     when its regression replay lost accuracy or drifted
                                                     (KL) too far, unless --override
tunehub adapters rollback [--data-dir DIR]            promote again the version the promoted one replaced
tunehub adapters export ADAPTER [--out DIR] [--format transformers|gguf] [--quantize ...] [--data-dir DIR]
                                                     merged weights; prints the new directory (transformers:
                                                     --quantize none|8bit|4bit) or the GGUF file (gguf:
                                                     --quantize f16|q8_0, an Ollama Modelfile beside it)

tunehub adapters load|unload ADAPTER [--url http://127.0.0.1:7860] [--admin-password PW]
                                                     in the running hub, over HTTP (/v1/adapters/ADAPTER/load)

ADAPTER is name (the latest version), name@N or name@vN. A running hub picks the new status up on its next
read; loading and unloading happen in the running hub (these commands, its Adapters tab, /v1/adapters).
The admin password is read from TUNEHUB_ADMIN_PASSWORD when --admin-password is not given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from .common import DATA_DIR_HELP, open_store

ADAPTER_STATUSES = ("candidate", "promoted", "retired")  # feedback.records.ADAPTER_STATUSES


def _service(store):
    from ..adapters_service import AdapterService

    return AdapterService(store)


def cmd_adapters_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        rows = [r for r in _service(store).rows() if args.status in (None, r.adapter.status)]
    if not rows:
        print("no adapters")
        return 0
    print(f"{'adapter':28} {'status':9} {'method':6} {'stage':6} {'parent':20} {'created':19}  path")
    for r in rows:
        a = r.adapter
        created = a.created_at[:19].replace("T", " ")
        print(
            f"{r.ref:28} {a.status:9} {a.method:6} {r.stage or '-':6} {a.parent or '-':20} {created:19}  {a.path}"
        )
    return 0


def _run(args: argparse.Namespace, action) -> int:
    from feedback.errors import StoreError

    with open_store(args) as store:
        try:
            return action(_service(store))
        except StoreError as e:
            print(f"tunehub: {e.message}", file=sys.stderr)
            return 1


def cmd_adapters_show(args: argparse.Namespace) -> int:
    def show(adapters) -> int:
        shown = adapters.lineage(args.adapter)
        shown["replay"] = _replay_summary(adapters, args.adapter)
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0

    return _run(args, show)


def _replay_summary(adapters, ref: str) -> dict | None:
    """The stored replay's accuracies and flip report (nothing is replayed here), or None without one."""
    from ..feedback_service import FeedbackService
    from ..promotion_service import PromotionService

    store = adapters.store
    report = PromotionService(store, adapters, FeedbackService(store), Path(store.path).parent).report(ref)
    if report is None:
        return None
    return {
        "against": report.get("against"),
        "candidate": report.get("candidate"),
        "incumbent": report.get("incumbent"),
        "flips": report.get("flips"),
    }


def cmd_adapters_promote(args: argparse.Namespace) -> int:
    def promote(adapters) -> int:
        from ..feedback_service import FeedbackService
        from ..promotion_service import PromotionService

        store = adapters.store  # the same guard as the hub's (replays the candidate first: seconds)
        promotion = PromotionService(store, adapters, FeedbackService(store), Path(store.path).parent)
        promoted = promotion.promote(args.adapter, override=args.override)
        print(f"{promoted.ref} promoted")
        return 0

    return _run(args, promote)


def cmd_adapters_rollback(args: argparse.Namespace) -> int:
    def rollback(adapters) -> int:
        promoted = adapters.rollback()
        print(f"rolled back: {promoted.ref} promoted again")
        return 0

    return _run(args, rollback)


def cmd_adapters_export(args: argparse.Namespace) -> int:
    def export(adapters) -> int:
        out = adapters.export(args.adapter, args.out, quantize=args.quantize, format=args.format)
        print(out)
        return 0

    return _run(args, export)


def _hub_post(args: argparse.Namespace, action: str) -> dict | None:
    """POST /v1/adapters/ADAPTER/ACTION to the running hub with the admin password; the answer, or None
    after printing why not."""
    import httpx

    password = args.admin_password or os.environ.get("TUNEHUB_ADMIN_PASSWORD")
    headers = {"Authorization": f"Bearer {password}"} if password else {}
    url = f"{args.url.rstrip('/')}/v1/adapters/{quote(args.adapter, safe='@')}/{action}"
    try:
        response = httpx.post(url, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as e:
        print(
            f"tunehub: no hub answered at {args.url} ({e}): start one with `tunehub serve`, or pass --url",
            file=sys.stderr,
        )
        return None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        hint = (
            " (pass the admin password: TUNEHUB_ADMIN_PASSWORD or --admin-password)"
            if response.status_code in (401, 403)
            else ""
        )
        print(f"tunehub: the hub answered {response.status_code}: {message}{hint}", file=sys.stderr)
        return None
    return response.json()


def cmd_adapters_load(args: argparse.Namespace) -> int:
    body = _hub_post(args, "load")
    if body is None:
        return 1
    print(f"{body['id']} is served as {body['served_as']}")
    return 0


def cmd_adapters_unload(args: argparse.Namespace) -> int:
    body = _hub_post(args, "unload")
    if body is None:
        return 1
    print(f"{body['id']} unloaded (it was served as {body['unloaded']})")
    return 0


def add_adapter_commands(sub) -> None:
    adapters = sub.add_parser(
        "adapters", help="list, show, promote, roll back, export, load or unload registered adapters"
    )
    adapters_sub = adapters.add_subparsers(dest="adapters_command", required=True)
    listing = adapters_sub.add_parser("list", help="every version, newest first")
    listing.add_argument("--status", choices=ADAPTER_STATUSES)
    show = adapters_sub.add_parser(
        "show", help="one version's lineage as JSON (job, dataset, votes, parents)"
    )
    show.add_argument("adapter", help="name, name@N or name@vN")
    promote = adapters_sub.add_parser(
        "promote", help="promote a version; the promoted one before it is retired"
    )
    promote.add_argument("adapter", help="name, name@N or name@vN")
    promote.add_argument(
        "--override",
        action="store_true",
        help="promote even when the regression replay refuses it (accuracy drop or KL from the base)",
    )
    rollback = adapters_sub.add_parser("rollback", help="promote again the version the promoted one replaced")
    export = adapters_sub.add_parser(
        "export",
        help="merge a version into its base and save it to a new directory (transformers weights or GGUF)",
    )
    export.add_argument("adapter", help="name, name@N or name@vN")
    export.add_argument(
        "--out", help="a new directory (default: DATA_DIR/exports/NAME-vN[-QUANTIZE], NAME-vN-gguf-QUANTIZE)"
    )
    export.add_argument(
        "--format",
        default="transformers",
        choices=("transformers", "gguf"),
        help="a transformers directory, or one GGUF file for llama.cpp / Ollama / LM Studio (default transformers)",
    )
    export.add_argument(
        "--quantize",
        default=None,
        choices=("none", "8bit", "4bit", "f16", "q8_0"),
        help="transformers: none (default), 8bit or 4bit (bitsandbytes); gguf: f16 (default) or q8_0",
    )
    for action, func, words in (
        ("load", cmd_adapters_load, "load a registered version into the running hub's engine"),
        ("unload", cmd_adapters_unload, "unload a registered version from the running hub's engine"),
    ):
        parser = adapters_sub.add_parser(action, help=words)
        parser.add_argument("adapter", help="name, name@N or name@vN")
        parser.add_argument("--url", default="http://127.0.0.1:7860", help="the running hub")
        parser.add_argument(
            "--admin-password", help="the hub's admin password (better: TUNEHUB_ADMIN_PASSWORD, not in `ps`)"
        )
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the hub")
        parser.set_defaults(func=func)
    for parser, func in (
        (listing, cmd_adapters_list),
        (show, cmd_adapters_show),
        (promote, cmd_adapters_promote),
        (rollback, cmd_adapters_rollback),
        (export, cmd_adapters_export),
    ):
        parser.add_argument("--data-dir", default="./tunehub-data", help=DATA_DIR_HELP)
        parser.set_defaults(func=func)
