"""Faults (issue 7, item 2): the data directory's disk fills up while clients vote and chat. The hub answers
507 in the OpenAI error envelope saying the disk is full (an error event when a chat stream has begun),
stores nothing of the refused votes, keeps every vote it acknowledged before unchanged (and the file passes
`PRAGMA integrity_check`), and accepts votes and chats again once space is freed.

Two disks: a real one, a tiny tmpfs mounted for the test (needs root and permission to mount; skipped
otherwise), and a write error injected at the commit (SQLite's own "database or disk is full"), which runs
everywhere. The hub's app runs in process (httpx.ASGITransport); the store writes through its real code.

Run: .venv/bin/python -m pytest tests/test_faults_disk.py -q
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from feedback.store import Store
from hub.app import build_app
from hub.settings import Settings
from tests.support.no_engine import NoEngine


class TmpfsDisk:
    """A 16 MiB tmpfs; `fill()` takes every free block with a filler file, `free()` deletes it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def attach(self, store: Store) -> None:
        pass

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(self.root).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()


class _FullOnCommit:
    """The writer's sqlite3 connection, except that COMMIT fails as SQLite fails it on a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.full = False

    def execute(self, sql: str, *args):
        if self.full and sql.strip().upper().startswith("COMMIT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


class InjectedDisk:
    """A full disk injected at the writer's COMMIT (the transaction stays open, as SQLite may leave it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conn: _FullOnCommit | None = None

    def attach(self, store: Store) -> None:
        self.conn = _FullOnCommit(store._writer.conn)
        store._writer.conn = self.conn

    def fill(self) -> None:
        self.conn.full = True

    def free(self) -> None:
        self.conn.full = False


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path) -> Iterator[TmpfsDisk | InjectedDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "injected":
        yield InjectedDisk(root)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the injected disk covers it")
    try:
        yield TmpfsDisk(root)
    finally:
        if subprocess.run(["umount", str(root)]).returncode != 0:
            subprocess.run(["umount", "-l", str(root)])


def votes_table(path: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT * FROM votes ORDER BY id").fetchall()


def test_a_full_disk_refuses_votes_cleanly_and_loses_nothing(disk):
    database = disk.root / "feedback.db"
    store = Store(database)
    try:
        generations = [
            store.add_generation(
                prompt=[{"role": "user", "content": f"q{i}"}], model="base", text="a" * 40
            ).id
            for i in range(400)
        ]
        disk.attach(store)
        app = build_app(
            Settings(data_dir=disk.root), NoEngine("disk-model"), store=store, with_ui=False, run_jobs=False
        )
        asyncio.run(vote_through_a_full_disk(app, disk, database, generations))
    finally:
        store.close()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def vote_through_a_full_disk(app, disk, database: Path, generations: list[str]) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        unused = iter(generations)  # one vote per generation: no vote replaces another

        async def vote() -> httpx.Response:
            body = {"type": "thumbs", "generation": {"generation_id": next(unused)}, "value": "up"}
            return await client.post("/v1/feedback", json={**body, "comment": "x" * 200})

        acknowledged = []
        for _ in range(50):
            response = await vote()
            assert response.status_code == 200, response.text
            acknowledged.append(response.json()["id"])
        # fold the WAL into the database and truncate it, so the next write needs new blocks
        with sqlite3.connect(database) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = votes_table(database)

        disk.fill()
        refused = None
        for _ in range(200):  # a tmpfs may still fit a few votes in blocks SQLite already holds
            response = await vote()
            if response.status_code != 200:
                refused = response
                break
            acknowledged.append(response.json()["id"])
        assert refused is not None, "votes were still accepted on a full disk"
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "disk_full" and error["type"] == "server_error"
        assert (
            "disk" in error["message"]
            and "full" in error["message"]
            and "nothing was stored" in error["message"]
        )
        for _ in range(3):  # every vote while the disk is full gets the same answer, no hang, no 500
            assert (await vote()).status_code == 507

        after = votes_table(database)
        assert after[: len(before)] == before, "a vote stored before the disk filled was changed"
        assert [row[0] for row in after] == acknowledged, (
            "the stored votes are not exactly the acknowledged ones"
        )
        listed = await client.get("/v1/feedback", params={"limit": 1000})
        assert listed.status_code == 200 and len(listed.json()["data"]) == len(acknowledged)

        disk.free()
        response = await vote()
        assert response.status_code == 200, response.text
        assert response.json()["id"] == acknowledged[-1] + 1
        assert len(votes_table(database)) == len(acknowledged) + 1


def test_a_chat_on_a_full_disk_ends_with_the_disk_full_error(disk, demo_model):
    # every served answer is stored before its last chunk (hub/recording.py): on a full disk that store
    # fails, and a stream that has begun must end with an error event, not a dropped connection
    from serving.loader import load_local_engine

    engine = load_local_engine(demo_model)
    store = Store(disk.root / "feedback.db")
    disk.attach(store)
    app = build_app(Settings(data_dir=disk.root), engine, store=store, with_ui=False, run_jobs=False)
    body = {"model": engine.model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub", timeout=60) as client:
                with sqlite3.connect(disk.root / "feedback.db") as conn:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                disk.fill()
                plain = await client.post("/v1/chat/completions", json=body)
                streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
                disk.free()
                after = await client.post("/v1/chat/completions", json=body)
                return plain, streamed, after

    plain, streamed, after = asyncio.run(scenario())
    assert plain.status_code == 507 and plain.json()["error"]["code"] == "disk_full", plain.text
    assert streamed.status_code == 200
    events = [line.removeprefix("data: ") for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events, events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "disk_full" and "full" in error["message"], events[-1]
    assert after.status_code == 200, after.text
