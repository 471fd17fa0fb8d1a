"""Data the regression replay ships for real models (`training.replay_sets` reads it):

- ``general.jsonl``: questions with one checkable answer (capitals, unit conversions, small arithmetic,
  spelling numbers in words, calendar facts), written by ``make_general.py`` in this directory
  (``python -m training.replay_data.make_general`` rewrites it; the rows are deterministic);
- ``heldout.txt``: a few KB of plain English prose written for this project (no third-party text), on
  which base, promoted and candidate models' perplexity is compared.
"""
