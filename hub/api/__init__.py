"""The hub's HTTP API, one router module per area; each route is a thin call into the services.

openai_compat.py  the OpenAI-compatible routes: /v1/models, chat and text completions, vLLM's adapter
                  load/unload; /health and /metrics
feedback.py       /v1/feedback (votes, triage, lineage) and /v1/leaderboard
jobs.py           /v1/jobs
adapters.py       /v1/adapters: list, promote, rollback, load, unload
promotion.py      /v1/adapters/{adapter}/replay and /promotion, auto-promote
protocol.py       pydantic models of the OpenAI API slice
server.py         the FastAPI app the hub and `tunehub engine` both start from
"""
