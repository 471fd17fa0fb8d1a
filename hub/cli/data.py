"""`tunehub export`, `tunehub users` and `tunehub leaderboard`: the feedback store from the command line.

tunehub export {sft,pairs,kto,prompts} --out FILE [--format trl|alpaca|sharegpt] [--mode dpo|reward]
               [--exclude-reasons too_long,...]
tunehub users add NAME [--role rater|admin] [--password PW | --password-stdin]
tunehub users list | passwd NAME | key NAME [--label TEXT] | keys [NAME] | revoke KEY_ID
tunehub leaderboard [--rounds 200] [--anchor MODEL] [--json]

They open the store in --data-dir (default ./tunehub-data) directly, so they work while the hub serves.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable

from .common import open_store

# the same lists as feedback.exports.KINDS / FORMATS (a test keeps them equal); importing the store here
# would slow down every `tunehub --help`
KINDS = ("sft", "pairs", "kto", "prompts")
FORMATS = ("trl", "alpaca", "sharegpt")


def _reporting_store_errors(
    command: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from feedback.errors import StoreError

        try:
            return command(args)
        except StoreError as exc:
            print(f"tunehub: {exc.message}", file=sys.stderr)
            return 1

    return run


# ----- export --------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from feedback.exports import export_dataset

    with open_store(args) as store:
        export = export_dataset(
            store,
            args.kind,
            args.out,
            format=args.format,
            mode=args.mode,
            margin=args.margin,
            eval_fraction=args.eval_fraction,
            exclude_reasons=args.exclude_reasons,
        )
    print(
        f"exported {len(export.train) + len(export.eval)} {args.kind} rows ({args.format}) from "
        f"{len(export.vote_ids)} votes: {len(export.train)} train, {len(export.eval)} eval; "
        f"dataset {export.dataset_id}"
    )
    for split, path in export.paths.items():
        print(f"  {split}: {path}")
    return 0


# ----- users ---------------------------------------------------------------------------------------------


def _password(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first and first != getpass.getpass("again: "):
            raise SystemExit("tunehub: the passwords differ; nothing was changed")
        return first or None
    if required:
        raise SystemExit("tunehub: give the password with --password or --password-stdin")
    return None


def cmd_users_add(args: argparse.Namespace) -> int:
    from ..auth import ADMIN_USER

    if args.name == ADMIN_USER:
        print(
            f"tunehub: {ADMIN_USER!r} is the login of the --admin-password; pick another name "
            f"(use --role admin for another admin)",
            file=sys.stderr,
        )
        return 1
    password = _password(args, required=False)
    with open_store(args, create=True) as store:
        rater = store.add_rater(args.name, role=args.role, password=password)
    login = "can sign in to the UI" if rater.has_password else "has no password yet (tunehub users passwd)"
    print(f"added {rater.role} {rater.name}; {login}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        raters = store.list_raters()
        counts = store.counts().by_rater
    if not raters:
        print("no users yet: tunehub users add NAME --role rater")
        return 0
    print(f"{'name':<24} {'role':<6} {'password':<8} votes")
    for r in raters:
        votes = sum(counts.get(r.name, {}).values())
        print(f"{r.name:<24} {r.role:<6} {'yes' if r.has_password else 'no':<8} {votes}")
    return 0


def cmd_users_passwd(args: argparse.Namespace) -> int:
    password = _password(args, required=True)
    if not password:
        raise SystemExit("tunehub: the password is empty; nothing was changed")
    with open_store(args) as store:
        store.set_password(args.name, password)
    print(f"password of {args.name} changed")
    return 0


def cmd_users_key(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        record, key = store.create_api_key(args.name, label=args.label)
    print(key)
    print(
        f"API key {record.id} for {record.rater}: shown only this once; send it as 'Authorization: Bearer KEY'",
        file=sys.stderr,
    )
    return 0


def cmd_users_keys(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        keys = store.list_api_keys(args.name)
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "live"
        print(f"{k.id}  {k.rater:<24} {state:<36} {k.label or ''}")
    return 0


def cmd_users_revoke(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        key = store.revoke_api_key(args.key_id)
    print(f"API key {key.id} of {key.rater} revoked")
    return 0


# ----- leaderboard ---------------------------------------------------------------------------------------


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from feedback.leaderboard import fit_leaderboard

    with open_store(args) as store:
        board = fit_leaderboard(
            store.pairwise_counts(), anchor=args.anchor, rounds=args.rounds, min_votes=args.min_votes
        )
    if args.json:
        from ..views import leaderboard_body

        print(json.dumps(leaderboard_body(board), indent=1))
        return 0
    if not board.ratings:
        print('no pairwise votes yet: vote in the Arena tab or POST /v1/feedback {"type": "pairwise", ...}')
        return 0
    print(f"{'rank':>4}  {'model':<32} {'rating':>6}  {'95% interval':<13} {'votes':>5}  W/L/T/both-bad")
    for r in board.ratings:
        interval = "" if r.lower is None else f"{r.lower:.0f}-{r.upper:.0f}"
        mark = "  provisional" if r.provisional else ""
        print(
            f"{r.rank:>4}  {r.model:<32} {r.rating:>6.0f}  {interval:<13} {r.votes:>5}  "
            f"{r.wins}/{r.losses}/{r.ties}/{r.both_bad}{mark}"
        )
    anchor = f"{board.anchor} = 1000" if board.anchor else "mean = 1000 (name the base with --anchor)"
    print(f"{board.n_votes} votes; {anchor}")
    return 0


# ----- parser --------------------------------------------------------------------------------------------


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Register `export`, `users` and `leaderboard` on the `tunehub` parser's subcommands."""

    def data_dir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-dir", default="./tunehub-data", help="the hub's data directory")

    export = sub.add_parser("export", help="write a training dataset from the collected votes")
    export.add_argument("kind", choices=KINDS, help="sft, pairs (preference), kto (unpaired) or prompts")
    export.add_argument(
        "--out", required=True, help="FILE.jsonl (eval split beside it as FILE.eval.jsonl) or a directory"
    )
    export.add_argument("--format", choices=FORMATS, default="trl", help="alpaca and sharegpt: sft only")
    export.add_argument(
        "--mode", choices=["dpo", "reward"], default="dpo", help="pairs from rankings: best vs rest, or all"
    )
    export.add_argument("--margin", action="store_true", help="add each pair's rank gap as 'margin'")
    export.add_argument("--eval-fraction", type=float, default=0.1, help="share of conversations held out")
    export.add_argument(
        "--exclude-reasons",
        metavar="REASONS",
        help="leave out votes that gave any of these reasons, comma-separated (e.g. too_long,wrong)",
    )
    data_dir(export)
    export.set_defaults(func=_reporting_store_errors(cmd_export))

    users = sub.add_parser("users", help="raters and admins: UI logins and API keys")
    actions = users.add_subparsers(dest="action", required=True)

    def with_password(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--password", help="the password (visible in the shell history; or --password-stdin)"
        )
        group.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    add = actions.add_parser("add", help="add a rater (or admin) account")
    add.add_argument("name")
    add.add_argument("--role", choices=["rater", "admin"], default="rater")
    with_password(add)
    add.set_defaults(func=_reporting_store_errors(cmd_users_add))
    listing = actions.add_parser("list", help="every account with its role and vote count")
    listing.set_defaults(func=_reporting_store_errors(cmd_users_list))
    passwd = actions.add_parser("passwd", help="set or change an account's password")
    passwd.add_argument("name")
    with_password(passwd)
    passwd.set_defaults(func=_reporting_store_errors(cmd_users_passwd))
    key = actions.add_parser("key", help="create an API key for an account (printed once)")
    key.add_argument("name")
    key.add_argument("--label", help="what the key is for")
    key.set_defaults(func=_reporting_store_errors(cmd_users_key))
    keys = actions.add_parser("keys", help="list API keys (never the keys themselves)")
    keys.add_argument("name", nargs="?")
    keys.set_defaults(func=_reporting_store_errors(cmd_users_keys))
    revoke = actions.add_parser("revoke", help="revoke an API key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_reporting_store_errors(cmd_users_revoke))
    for parser in (add, listing, passwd, key, keys, revoke):
        data_dir(parser)

    board = sub.add_parser("leaderboard", help="Bradley-Terry ratings from the pairwise votes")
    board.add_argument("--anchor", help="the model rated 1000 (usually the base model)")
    board.add_argument("--rounds", type=int, default=200, help="bootstrap rounds for the 95%% intervals")
    board.add_argument("--min-votes", type=int, default=20, help="fewer votes than this: provisional")
    board.add_argument("--json", action="store_true", help="print the same JSON as GET /v1/leaderboard")
    data_dir(board)
    board.set_defaults(func=_reporting_store_errors(cmd_leaderboard))
