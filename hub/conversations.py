"""A user's chat conversations: start one, list one's own, and rebuild one as chat history to continue it.

Each answer the Chat tab streams is stored as a generation in the conversation (hub/recording.py), with the
whole prompt it answered. So a conversation's history is the prompt of its newest generation plus that
answer (or the user's correction of it), and the answer at message k is the newest generation whose prompt
is the history before k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from feedback.errors import NotFound
from feedback.records import Conversation, Generation
from feedback.store import Store

from .auth import Principal

TITLE_CHARS = 60


@dataclass
class ChatHistory:
    conversation_id: str
    system: str = ""
    messages: list[dict] = field(default_factory=list)  # user/assistant turns, as the chatbot shows them
    generation_ids: dict[int, str] = field(default_factory=dict)  # message index -> stored generation id
    ratings: dict[int, str] = field(default_factory=dict)  # message index -> "up"/"down": the viewer's thumbs


def _turns(prompt: list[dict]) -> tuple[str, list[dict]]:
    system = "\n".join(str(m.get("content", "")) for m in prompt if m.get("role") == "system")
    return system, [
        {"role": m["role"], "content": str(m.get("content", ""))} for m in prompt if m.get("role") != "system"
    ]


class Conversations:
    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, owner: str, first_prompt: str, *, kind: str | None = None) -> str:
        """A new conversation titled after its first prompt (and ``kind``: arena, rank); returns its id."""
        title = (f"[{kind}] " if kind else "") + " ".join(first_prompt.split())
        if len(title) > TITLE_CHARS:
            title = title[: TITLE_CHARS - 1] + "…"
        return self.store.add_conversation(title=title or None, rater=owner, source="ui").id

    def owned(self, owner: str, limit: int = 50) -> list[Conversation]:
        """``owner``'s conversations, newest first."""
        return self.store.list_conversations(rater=owner, limit=limit)

    def open(self, conversation_id: str, viewer: Principal) -> ChatHistory:
        """The conversation as chat history; NotFound unless ``viewer`` owns it or is an admin."""
        conversation = self.store.get_conversation(conversation_id)
        if conversation.rater != viewer.name and not viewer.is_admin:
            raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
        generations = self.store.list_generations(conversation_id=conversation_id)
        history = ChatHistory(conversation_id)
        if not generations:
            return history
        last = generations[-1]
        history.system, messages = _turns(last.prompt)
        answer = self._edited_text(last, conversation.rater or viewer.name) or last.text  # the owner's fix
        history.messages = [*messages, {"role": "assistant", "content": answer}]
        by_context: dict[str, str] = {}
        for g in generations:  # oldest first, so the newest answer to a context wins
            by_context[repr(_turns(g.prompt)[1])] = g.id
        for index, message in enumerate(history.messages):
            if message["role"] == "assistant":
                found = by_context.get(repr(history.messages[:index]))
                if found is not None:
                    history.generation_ids[index] = found
                    thumbs = self.store.active_thumbs(found, viewer.name)
                    if thumbs is not None:
                        history.ratings[index] = thumbs.value
        return history

    def _edited_text(self, generation: Generation, rater: str) -> str | None:
        # a shortcut: the correction of the last answer is among the rater's recent edits
        for vote in self.store.list_votes(rater, kind="edit", limit=200):
            if vote.generation_ids[0] == generation.id:
                return vote.edited_text
        return None
