"""`tunehub adapters`: registered adapter versions in the data dir's store.

tunehub adapters list [--status STATUS] [--data-dir DIR]
tunehub adapters show ADAPTER [--data-dir DIR]        lineage as JSON: job, dataset snapshot, votes, parents
tunehub adapters promote ADAPTER [--data-dir DIR]     the version promoted before it is retired
tunehub adapters rollback [--data-dir DIR]            promote again the version the promoted one replaced
tunehub adapters export ADAPTER [--out DIR] [--quantize none|8bit|4bit] [--data-dir DIR]
                                                     merged full weights; prints the new directory

ADAPTER is name (the latest version), name@N or name@vN. A running hub picks the new status up on its next
read; loading and unloading happen in the running hub (its Adapters tab, or /v1/load_lora_adapter).
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli_train import DATA_DIR_HELP, _job_store

ADAPTER_STATUSES = ("candidate", "promoted", "retired")  # feedback.records.ADAPTER_STATUSES


def _service(store):
    from .adapters_service import AdapterService

    return AdapterService(store)


def cmd_adapters_list(args: argparse.Namespace) -> int:
    with _job_store(args) as store:
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

    with _job_store(args) as store:
        try:
            return action(_service(store))
        except StoreError as e:
            print(f"tunehub: {e.message}", file=sys.stderr)
            return 1


def cmd_adapters_show(args: argparse.Namespace) -> int:
    def show(adapters) -> int:
        print(json.dumps(adapters.lineage(args.adapter), indent=2))
        return 0

    return _run(args, show)


def cmd_adapters_promote(args: argparse.Namespace) -> int:
    def promote(adapters) -> int:
        promoted = adapters.promote(args.adapter)
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
        out = adapters.export(args.adapter, args.out, quantize=args.quantize)
        print(out)
        return 0

    return _run(args, export)


def add_adapter_commands(sub) -> None:
    adapters = sub.add_parser("adapters", help="list, show, promote or roll back registered adapters")
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
    rollback = adapters_sub.add_parser("rollback", help="promote again the version the promoted one replaced")
    export = adapters_sub.add_parser(
        "export",
        help="merge a version into its base and save full (or 8-bit/4-bit) weights to a new directory",
    )
    export.add_argument("adapter", help="name, name@N or name@vN")
    export.add_argument("--out", help="a new directory (default: DATA_DIR/exports/NAME-vN[-QUANTIZE])")
    export.add_argument(
        "--quantize",
        default="none",
        choices=("none", "8bit", "4bit"),
        help="bitsandbytes weights (default none)",
    )
    for parser, func in (
        (listing, cmd_adapters_list),
        (show, cmd_adapters_show),
        (promote, cmd_adapters_promote),
        (rollback, cmd_adapters_rollback),
        (export, cmd_adapters_export),
    ):
        parser.add_argument("--data-dir", default="./tunehub-data", help=DATA_DIR_HELP)
        parser.set_defaults(func=func)
