"""The feedback store: generations, votes, rankings, adapters and exports in SQLite.

store.py           the Store class: one SQLite file (WAL), typed methods, no SQL outside this package
connections.py     one writer connection behind a lock, a read-only connection per thread
accounts.py        raters (roles, scrypt password hashes) and hashed API keys
generations.py     conversations and the generations (answers) the hub served
votes.py           thumbs, pairwise, rankings and edits; replace-on-revote; counts
jobs.py            training jobs: the queue the job runner works through, their status and progress
lineage.py         dataset snapshots, adapter versions and the votes behind them
lookups.py         the one row a query names (or NotFound); a referenced id checked to exist
schema/migrations.py  named migrations applied at start-up
records.py         the dataclasses the store returns
errors.py          StoreError with an HTTP status: NotFound 404, Invalid 422, Conflict 409
validation.py      checks on incoming values; canonical JSON for hashing
hashing.py         password and API-key hashing
pairs.py           a ranking of N expanded into preference pairs (reward: all, dpo: best vs rest)
exports.py         TRL datasets (sft, pairs, kto, prompts; alpaca/sharegpt for sft) from the votes
formats.py         TRL rows <-> alpaca and sharegpt rows
imports.py         JSON/JSONL/parquet/datasets dirs in TRL, alpaca or sharegpt form, checked per row
leaderboard.py     Bradley-Terry ratings with seeded bootstrap intervals
"""
