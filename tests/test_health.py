"""/health tells the truth about an engine in another process (issue 7): the hub probes the engine's own
/health (cached: one request per interval however often /health is asked), answers 503 naming the engine and
why while it cannot be reached, and 200 again once it answers; /health/live stays 200 for container
liveness checks. Here the engine is a small real HTTP server in a thread, stopped and started again; a real
`tunehub engine` killed by its pid is in tests/test_faults_engine.py.

Run: .venv/bin/python -m pytest tests/test_health.py -q
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from feedback.store import Store
from hub.app import build_app
from hub.settings import Settings
from serving.probe import HealthProbe
from serving.vllm import VLLMEngine
from tests.support.server import free_port


class TinyEngine:
    """Answers /health and /v1/models on 127.0.0.1:`port` like vLLM; counts the /health requests."""

    def __init__(self, port: int) -> None:
        self.port, self.health_hits = port, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/health":
                    owner.health_hits += 1
                    body = b""
                else:
                    body = json.dumps({"data": [{"id": "tiny", "max_model_len": 64}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_probe_asks_once_per_interval_and_callers_share_one_check():
    now, calls = [0.0], []

    async def check():
        calls.append(now[0])
        await asyncio.sleep(0.01)
        return None if len(calls) == 1 else "down"

    probe = HealthProbe(check, interval_s=2.0, clock=lambda: now[0])

    async def scenario():
        first = await asyncio.gather(*[probe.problem() for _ in range(20)])
        now[0] = 1.9
        cached = await probe.problem()
        now[0] = 2.0
        later = await probe.problem()
        return first, cached, later

    first, cached, later = asyncio.run(scenario())
    assert first == [None] * 20 and cached is None and later == "down"
    assert calls == [0.0, 2.0]


def test_health_reports_a_dead_remote_engine_and_its_return(tmp_path):
    port = free_port()
    tiny = TinyEngine(port)
    engine = VLLMEngine(f"http://127.0.0.1:{port}", health_interval_s=1.0)
    store = Store(tmp_path / "feedback.db")
    app = build_app(Settings(data_dir=tmp_path), engine, store=store, with_ui=False, run_jobs=False)

    async def health_until(client, status: int) -> httpx.Response:
        for _ in range(200):
            response = await client.get("/health")
            if response.status_code == status:
                return response
            await asyncio.sleep(0.05)
        raise AssertionError(f"/health never answered {status}: {response.status_code} {response.text}")

    async def scenario():
        nonlocal tiny
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
                up = [await client.get("/health") for _ in range(30)]
                hits_for_30 = tiny.health_hits
                tiny.stop()
                down = await health_until(client, 503)
                live = await client.get("/health/live")
                tiny = TinyEngine(port)  # back on the same port, as a restarted engine would be
                back = await health_until(client, 200)
                tiny.stop()
                return up, hits_for_30, down, live, back

    up, hits_for_30, down, live, back = asyncio.run(scenario())
    assert all(r.status_code == 200 and r.json()["status"] == "ok" for r in up)
    assert hits_for_30 <= 3, f"{hits_for_30} probes for 30 /health calls: not cached"
    error = down.json()["error"]
    assert error["code"] == "engine_unavailable"
    assert f"http://127.0.0.1:{port}" in error["message"] and "not reachable" in error["message"]
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    assert back.json()["model"] == "tiny"
