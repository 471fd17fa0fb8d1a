"""What the UI's tabs are given: the services the API routes use too, built once in hub/app.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..adapters_service import AdapterService
    from ..arena_service import ArenaService
    from ..auth import Auth
    from ..chat_service import ChatService
    from ..conversations import Conversations
    from ..dataset_service import DatasetService
    from ..feedback_service import FeedbackService
    from ..jobs_service import JobsService
    from ..promotion_service import PromotionService


@dataclass(frozen=True)
class UiServices:
    """The services the UI calls; the same objects the API routes use."""

    chat: ChatService
    feedback: FeedbackService
    arena: ArenaService
    conversations: Conversations
    datasets: DatasetService
    auth: Auth
    jobs: JobsService
    adapters: AdapterService
    promotion: PromotionService | None = None  # replays, decisions, guarded promotions (the hub sets it)
