"""The feedback store: one SQLite file (WAL) holding what the hub served, how raters judged it, and what
was trained from it. Callers use :class:`Store`'s typed methods and never write SQL.

    from feedback.store import Store
    store = Store("tunehub-data/feedback.db")            # applies pending migrations
    g = store.add_generation(prompt=[{"role": "user", "content": "hi"}], model="base", text="hello")
    store.add_thumbs(g.id, "up", rater="alice", tags=["helpful"])

Thread-safe: writes share one connection behind a lock, reads use a connection per thread.
"""

from __future__ import annotations

from feedback.accounts import AccountMethods
from feedback.generations import GenerationMethods, generation_id
from feedback.jobs import JobMethods
from feedback.lineage import LineageMethods
from feedback.promotions import PromotionMethods
from feedback.vote_search import VoteSearchMethods
from feedback.votes import VoteMethods

__all__ = ["Store", "generation_id"]


class Store(
    AccountMethods,
    GenerationMethods,
    VoteMethods,
    VoteSearchMethods,
    JobMethods,
    LineageMethods,
    PromotionMethods,
):
    """The feedback database. ``Store(path)`` opens or creates it; ``close()`` (or ``with``) closes it.

    Method groups, each in its own module:

    - raters and API keys (:mod:`feedback.accounts`): ``add_rater``, ``get_rater``, ``list_raters``,
      ``set_password``, ``check_password``, ``create_api_key``, ``check_api_key``, ``list_api_keys``,
      ``revoke_api_key``;
    - conversations and generations (:mod:`feedback.generations`): ``add_conversation``,
      ``get_conversation``, ``list_conversations``, ``add_generation``, ``get_generation``,
      ``get_generations``, ``list_generations``;
    - votes (:mod:`feedback.votes`): ``add_thumbs``, ``add_pairwise``, ``add_ranking``, ``add_edit``,
      ``get_vote``, ``list_votes``, ``pairwise_comparisons``, ``counts``;
    - vote search (:mod:`feedback.vote_search`): ``search_votes`` (keyset pages, filters), ``vote_models``,
      ``pairwise_counts``, ``thumbs_reason_counts``, ``adapter_for_model``;
    - jobs (:mod:`feedback.jobs`): ``create_job``, ``get_job``, ``list_jobs``, ``update_job``;
    - lineage (:mod:`feedback.lineage`): ``add_dataset``, ``get_dataset``, ``list_datasets``,
      ``add_adapter``, ``get_adapter``, ``list_adapters``, ``set_adapter_status``, ``adapter_vote_ids``,
      ``vote_adapters``;
    - promotions (:mod:`feedback.promotions`): ``promoted_adapter``, ``promote_adapter``,
      ``rollback_adapter``.

    Errors are :class:`~feedback.errors.StoreError` subclasses with an HTTP ``status``: ``NotFound``
    (404), ``Invalid`` (422), ``Conflict`` (409); a write that finds the disk full raises ``DiskFull``
    (507) after rolling back.
    """
