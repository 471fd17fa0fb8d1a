"""A vLLM-protocol server in the test's own event loop whose streams can be cut at a chosen point, for the
failover paths of serving/replicas.py that a real engine cannot be made to hit on cue.

    async with FakeReplica("drop_after") as replica:   # "ok" | "drop_before" | "drop_after"
        replica.url, replica.chats                     # chat requests it received

"ok" streams "Hi there" and a finish; "drop_before" sends the 200 header and closes before any event;
"drop_after" sends one token and closes. /health and /v1/models answer in every mode.
"""

from __future__ import annotations

import asyncio
import json

MODELS = {"object": "list", "data": [{"id": "base", "object": "model", "root": "/m", "max_model_len": 256}]}


def _event(content: str | None = None, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


class FakeReplica:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.chats = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeReplica:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = next(
                (
                    int(line.split(":")[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            method, path = head.split()[:2]
            if path == "/health":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            elif path == "/v1/models":
                body = json.dumps(MODELS).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            else:
                self.chats += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                )
                if self.mode in ("ok", "drop_after"):
                    writer.write(_event("Hi"))
                if self.mode == "ok":
                    writer.write(_event(" there") + _event(finish="stop") + b"data: [DONE]\n\n")
            await writer.drain()
        finally:
            writer.close()
