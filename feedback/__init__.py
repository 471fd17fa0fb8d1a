"""The feedback store: generations, votes, rankings, adapters and exports in SQLite."""
