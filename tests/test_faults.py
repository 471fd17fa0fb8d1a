"""Faults (issue 7, item 2, first part): a damaged feedback database stops `tunehub serve` at start-up with a
message naming the file, and the file is left as it was (never recreated); a server killed with SIGKILL
while clients vote loses no vote it acknowledged (a vote is answered only after its commit:
hub/write_batcher.py).

Run: .venv/bin/python -m pytest tests/test_faults.py -q
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from feedback.errors import CorruptStore, NotFound
from feedback.store import Store
from tests.support.server import TEST_ENVIRONMENT, HubProcess, free_port

REPO = Path(__file__).resolve().parents[1]


def serve(model: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """Start `tunehub serve`, expecting it to refuse; returns the finished process."""
    args = [sys.executable, "-m", "hub.cli", "serve", "--model", str(model), "--data-dir", str(data_dir)]
    args += ["--port", str(free_port()), "--log-level", "warning"]
    return subprocess.run(
        args,
        env={**os.environ, **TEST_ENVIRONMENT},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def a_store_with_votes(path: Path, votes: int = 200) -> None:
    with Store(path) as store:
        for i in range(votes):
            g = store.add_generation(
                prompt=[{"role": "user", "content": f"q{i}"}], model="base", text="a" * 500
            )
            store.add_thumbs(g.id, "up", rater="alice")


def damage(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    if where == "header":
        data[:100] = b"\x00" * 100
    elif where == "garbage":
        data = bytearray(b"this is not a database" * 200)
    elif where == "truncated":
        data = data[: len(data) // 3]
    else:  # a table page near the end of the file, which opening the file never reads
        page = len(data) // 4096 - 2
        data[page * 4096 : (page + 1) * 4096] = b"\xab" * 4096
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "garbage", "truncated", "late page"])
def test_a_damaged_database_stops_the_hub_with_its_name(tmp_path, demo_model, where):
    database = tmp_path / "feedback.db"
    a_store_with_votes(database)
    damage(database, where)
    before = database.read_bytes()
    finished = serve(demo_model, tmp_path)
    assert finished.returncode == 2, finished.stderr[-2000:]
    message = finished.stderr.strip().splitlines()[-1]
    assert message.startswith("tunehub: the feedback database") and str(database) in message
    assert "damaged" in message and "backup" in message
    assert "Traceback" not in finished.stderr
    assert database.read_bytes() == before  # left as it was: not recreated, not "repaired"


def test_the_store_names_the_file_when_opened_directly(tmp_path):
    database = tmp_path / "feedback.db"
    a_store_with_votes(database, votes=5)
    damage(database, "garbage")
    with pytest.raises(CorruptStore, match="feedback.db is damaged"):
        Store(database)


def test_a_file_that_cannot_be_opened_is_not_called_damaged(tmp_path):
    # only SQLITE_CORRUPT / SQLITE_NOTADB count as damage; "unable to open" and "locked" pass through
    (tmp_path / "feedback.db").mkdir()
    with pytest.raises(sqlite3.OperationalError):
        Store(tmp_path / "feedback.db")


@pytest.mark.slow
def test_every_acknowledged_vote_survives_a_sigkill(tmp_path, demo_model):
    data_dir = tmp_path / "hub"
    hub = HubProcess(model=demo_model, data_dir=data_dir).start()
    try:
        model = httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]
        refs = []
        for i in range(4):
            answer = httpx.post(
                f"{hub.url}/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": f"Q{i}"}],
                    "max_tokens": 4,
                    "n": 8,
                },
                timeout=60,
            ).json()
            refs += [{"generation_id": answer["id"], "choice": c} for c in range(8)]

        acknowledged: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def voter(offset: int) -> None:
            with httpx.Client(base_url=hub.url, timeout=10) as client:
                i = offset
                while not stop.is_set():
                    a, b = refs[i % len(refs)], refs[(i + 1) % len(refs)]
                    body = (
                        {"type": "thumbs", "generation": a, "value": "up" if i % 2 else "down"}
                        if i % 3
                        else {"type": "pairwise", "a": a, "b": b, "winner": "a"}
                    )
                    try:
                        response = client.post("/v1/feedback", json=body)
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 200:
                        with lock:
                            acknowledged.append(response.json()["id"])
                    i += 7

        voters = [threading.Thread(target=voter, args=(k,)) for k in range(8)]
        for t in voters:
            t.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        hub.process.kill()  # SIGKILL: no shutdown, no final commit
        hub.process.wait(10)
        stop.set()
        for t in voters:
            t.join(15)
        assert len(acknowledged) >= 50, len(acknowledged)

        # the restarted hub serves every acknowledged vote
        hub = HubProcess(model=demo_model, data_dir=data_dir).start()
        missing = []
        with Store(data_dir / "feedback.db") as store:
            for vote_id in acknowledged:
                try:
                    store.get_vote(vote_id)
                except NotFound:
                    missing.append(vote_id)
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged votes lost: {missing[:10]}"
        for vote_id in acknowledged[-5:]:  # the last ones before the kill, through the API too
            assert httpx.get(f"{hub.url}/v1/feedback/{vote_id}").status_code == 200
    finally:
        hub.stop()
