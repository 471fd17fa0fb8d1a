"""`tunehub export`, `tunehub users` and `tunehub leaderboard` on a real SQLite store: accounts with hashed
passwords and API keys, TRL / alpaca / sharegpt exports with their eval split and snapshot, the ratings table,
and errors that say what was wrong.

Run: .venv/bin/python -m pytest tests/test_cli_data.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback import exports
from feedback.store import Store
from hub.cli import data as cli_data
from hub.cli import main as tunehub
from tests.support.cli import tunehub_process

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = tunehub(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def voted(data_dir) -> Path:
    """A store with one answer of each model and a vote of every kind on them."""
    with Store(data_dir / "feedback.db") as store:
        a = store.add_generation(prompt=PROMPT, model="base", text="4", response_id="chatcmpl-a")
        b = store.add_generation(prompt=PROMPT, model="lora", text="5", response_id="chatcmpl-b")
        c = store.add_generation(prompt=PROMPT, model="lora", text="22", response_id="chatcmpl-c")
        store.add_thumbs(a.id, "up", rater="alice")
        store.add_thumbs(b.id, "down", rater="alice", tags=["wrong"])
        store.add_pairwise(a.id, b.id, "a", rater="alice")
        store.add_ranking([a.id, b.id, c.id], rater="bob")
        store.add_edit(c.id, "2 + 2 = 4", rater="bob")
    return data_dir


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----- users ----------------------------------------------------------------------------------------------


def test_users_add_list_passwd(capsys, data_dir):
    code, out, _ = run(capsys, "users", "add", "alice", "--password", "s3cret", "--data-dir", str(data_dir))
    assert code == 0 and "added rater alice" in out
    assert run(capsys, "users", "add", "root", "--role", "admin", "--data-dir", str(data_dir))[0] == 0
    code, out, _ = run(capsys, "users", "list", "--data-dir", str(data_dir))
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["alice"][1:3] == ["rater", "yes"] and rows["root"][1:3] == ["admin", "no"]

    with Store(data_dir / "feedback.db") as store:
        assert store.check_password("alice", "s3cret") is not None
        assert store.check_password("alice", "wrong") is None
    assert run(capsys, "users", "passwd", "alice", "--password", "n3w", "--data-dir", str(data_dir))[0] == 0
    with Store(data_dir / "feedback.db") as store:
        assert store.check_password("alice", "n3w") is not None


def test_users_refuses_the_admin_name_and_duplicates(capsys, data_dir):
    code, _, err = run(capsys, "users", "add", "admin", "--password", "x", "--data-dir", str(data_dir))
    assert code == 1 and "--admin-password" in err
    run(capsys, "users", "add", "alice", "--data-dir", str(data_dir))
    code, _, err = run(capsys, "users", "add", "alice", "--data-dir", str(data_dir))
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "users", "add", "no spaces", "--data-dir", str(data_dir))
    assert code == 1 and "not a valid name" in err


def test_api_keys_are_shown_once_and_stored_hashed(capsys, data_dir):
    run(capsys, "users", "add", "alice", "--data-dir", str(data_dir))
    code, out, err = run(capsys, "users", "key", "alice", "--label", "laptop", "--data-dir", str(data_dir))
    key = out.strip()
    assert code == 0 and key.startswith("th-") and "only this once" in err
    with Store(data_dir / "feedback.db") as store:
        assert store.check_api_key(key).rater == "alice"
    assert key not in (data_dir / "feedback.db").read_bytes().decode("latin-1")
    code, out, _ = run(capsys, "users", "keys", "--data-dir", str(data_dir))
    key_id = out.split()[0]
    assert "alice" in out and "laptop" in out and key not in out
    assert run(capsys, "users", "revoke", key_id, "--data-dir", str(data_dir))[0] == 0
    with Store(data_dir / "feedback.db") as store:
        assert store.check_api_key(key) is None
    code, _, err = run(capsys, "users", "key", "nobody", "--data-dir", str(data_dir))
    assert code == 1 and "nobody" in err


def test_a_missing_store_is_named(capsys, tmp_path):
    with pytest.raises(SystemExit, match="no feedback store"):
        tunehub(["users", "list", "--data-dir", str(tmp_path / "nowhere")])


# ----- export ---------------------------------------------------------------------------------------------


def test_export_each_kind(capsys, voted, tmp_path):
    # conversation ids are random, so a default 10% eval split could take any kind's rows (the split is tested
    # in test_exports.py): keep them all in train, the file the command names
    for kind in ("sft", "pairs", "kto", "prompts"):
        out_file = tmp_path / f"{kind}.jsonl"
        code, out, _ = run(
            capsys, "export", kind, "--out", str(out_file), "--eval-fraction", "0", "--data-dir", str(voted)
        )
        assert code == 0, out
        assert f"{kind} rows (trl)" in out and str(out_file) in out
        rows = read_jsonl(out_file)
        if kind == "sft":
            assert all(set(r) == {"messages", "reasons"} for r in rows)  # the vote's reason tags ride along
            assert {r["messages"][-1]["content"] for r in rows} >= {"4", "2 + 2 = 4"}
        elif kind == "pairs":
            assert all(set(r) == {"prompt", "chosen", "rejected", "reasons"} for r in rows)
            assert [{"role": "assistant", "content": "4"}] in [r["chosen"] for r in rows]  # the pairwise vote
        elif kind == "kto":
            assert {r["label"] for r in rows} == {True, False}
        else:
            assert rows == [{"prompt": PROMPT}]
    with Store(voted / "feedback.db") as store:
        assert sorted(d.kind for d in store.list_datasets()) == ["kto", "pairs", "prompts", "sft"]


def test_export_sft_as_alpaca_and_sharegpt(capsys, voted, tmp_path):
    # conversation ids are random, so a default 10% eval split could hold every row: keep them all in train
    run(
        capsys,
        "export",
        "sft",
        "--out",
        str(tmp_path / "a.jsonl"),
        "--format",
        "alpaca",
        "--eval-fraction",
        "0",
        "--data-dir",
        str(voted),
    )
    assert {"instruction", "output"} <= set(read_jsonl(tmp_path / "a.jsonl")[0])
    run(
        capsys,
        "export",
        "sft",
        "--out",
        str(tmp_path / "s"),
        "--format",
        "sharegpt",
        "--eval-fraction",
        "0",
        "--data-dir",
        str(voted),
    )
    assert "conversations" in read_jsonl(tmp_path / "s" / "train.jsonl")[0]


def test_export_errors_say_what_to_do(capsys, voted, data_dir, tmp_path):
    code, _, err = run(
        capsys,
        "export",
        "pairs",
        "--out",
        str(tmp_path / "p.jsonl"),
        "--format",
        "alpaca",
        "--data-dir",
        str(voted),
    )
    assert code == 1 and "SFT data only" in err
    empty = tmp_path / "empty"
    Store(empty / "feedback.db").close()
    code, _, err = run(capsys, "export", "sft", "--out", str(tmp_path / "x.jsonl"), "--data-dir", str(empty))
    assert code == 1 and "nothing to export" in err
    with pytest.raises(SystemExit):
        tunehub(["export", "everything", "--out", "x.jsonl"])


def test_the_cli_lists_match_the_exporter():
    assert cli_data.KINDS == exports.KINDS and cli_data.FORMATS == exports.FORMATS


# ----- leaderboard ----------------------------------------------------------------------------------------


def test_leaderboard_table_and_json(capsys, voted):
    code, out, _ = run(capsys, "leaderboard", "--anchor", "base", "--rounds", "50", "--data-dir", str(voted))
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["1", "base", "1000"]
    assert "provisional" in out and "base = 1000" in out
    code, out, _ = run(capsys, "leaderboard", "--json", "--data-dir", str(voted))
    board = json.loads(out)
    assert board["n_votes"] == 1 and {r["model"] for r in board["data"]} == {"base", "lora"}


def test_the_console_command_runs(tmp_path):
    """The real `tunehub` entry point, in a fresh process."""
    result = tunehub_process(
        "users", "add", "carol", "--password-stdin", "--data-dir", str(tmp_path), input="pw\n", timeout=120
    )
    assert result.returncode == 0, result.stderr
    with Store(tmp_path / "feedback.db") as store:
        assert store.check_password("carol", "pw") is not None
