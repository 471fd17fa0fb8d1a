"""Conversions between TRL's conversational rows and the alpaca and sharegpt layouts LLaMA-Factory uses.

TRL conversational SFT row: ``{"messages": [{"role", "content"}, ...]}`` ending with the assistant answer.

- alpaca: ``{"instruction", "input", "output", "system", "history": [[user, assistant], ...]}``; the last
  user turn is the instruction, earlier turns are the history.
- sharegpt: ``{"conversations": [{"from": "human"|"gpt", "value"}], "system"}``.

Export-side functions take messages; import-side functions raise :class:`RowError` naming the field,
which the importer prefixes with the row number.
"""

from __future__ import annotations

from typing import Any

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class RowError(ValueError):
    """A problem with one field of one row; ``str()`` is the message without the row number."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f'field "{field}" {problem}')
        self.field = field


def text_of(content: Any) -> str:
    """Message content as a string: OpenAI content parts are joined, None is empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages reduced to ``{"role", "content": str}``, the shape TRL's chat templating expects."""
    return [{"role": m["role"], "content": text_of(m.get("content"))} for m in messages]


def assistant(text: str) -> list[dict[str, str]]:
    """A one-message assistant completion, as TRL's ``chosen``/``rejected``/``completion`` columns hold."""
    return [{"role": "assistant", "content": text}]


def _turns(messages: list[dict[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """(system text, alternating user/assistant turns) with consecutive same-role messages merged.

    Shortcuts: roles other than system and assistant (such as tool results) count as user turns, and
    assistant turns before the first user turn are dropped; alpaca and sharegpt cannot hold either.
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[tuple[str, str]] = []
    for m in messages:
        if m["role"] == "system":
            continue
        role = "assistant" if m["role"] == "assistant" else "user"
        if not turns and role == "assistant":
            continue
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + m["content"])
        else:
            turns.append((role, m["content"]))
    return system, turns


def messages_to_alpaca(messages: list[dict[str, str]]) -> dict[str, Any]:
    """An SFT conversation (ending with the assistant answer) as an alpaca row."""
    system, turns = _turns(messages)
    texts = [text for _, text in turns]
    pairs = [[texts[i], texts[i + 1]] for i in range(0, len(texts) - 1, 2)]
    instruction, output = pairs[-1] if pairs else ("", "")
    return {
        "instruction": instruction,
        "input": "",
        "output": output,
        "system": system,
        "history": pairs[:-1],
    }


def messages_to_sharegpt(messages: list[dict[str, str]]) -> dict[str, Any]:
    """An SFT conversation as a sharegpt row."""
    system, turns = _turns(messages)
    conversations = [
        {"from": "gpt" if role == "assistant" else "human", "value": text} for role, text in turns
    ]
    return {"conversations": conversations, "system": system}


# -- import side --------------------------------------------------------------------------------------


def _string(row: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    value = row.get(field)
    if value is None:
        if required:
            raise RowError(field, "is missing")
        return None
    if not isinstance(value, str):
        raise RowError(field, f"must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def alpaca_prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt messages of an alpaca row: system, history turns, then instruction (+ input)."""
    instruction = _string(row, "instruction")
    extra = _string(row, "input", required=False)
    system = _string(row, "system", required=False)
    messages = [{"role": "system", "content": system}] if system else []
    history = row.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise RowError("history", f"must be a list of [user, assistant] pairs, got {history!r:.60}")
        for i, turn in enumerate(history):
            if not (
                isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
            ):
                raise RowError(
                    "history", f"item {i} must be a [user, assistant] pair of strings, got {turn!r:.60}"
                )
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    content = f"{instruction}\n{extra}" if extra else instruction
    return [*messages, {"role": "user", "content": content}]


def sharegpt_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of a sharegpt row's ``conversations`` (with its ``system`` field first)."""
    conversations = row.get("conversations")
    if conversations is None:
        raise RowError("conversations", "is missing")
    if not isinstance(conversations, list) or not conversations:
        raise RowError(
            "conversations", f"must be a non-empty list of {{from, value}} turns, got {conversations!r:.60}"
        )
    system = _string(row, "system", required=False)
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(conversations):
        messages.append(sharegpt_turn(turn, f"conversations[{i}]"))
    return messages


def sharegpt_turn(turn: Any, field: str) -> dict[str, str]:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise RowError(field, f"must be an object with 'from' and 'value', got {turn!r:.60}")
    role = SHAREGPT_ROLES.get(turn["from"])
    if role is None:
        raise RowError(f"{field}.from", f"is {turn['from']!r}; expected one of human, gpt, system")
    if not isinstance(turn["value"], str):
        raise RowError(f"{field}.value", f"must be a string, got {type(turn['value']).__name__}")
    return {"role": role, "content": turn["value"]}


def trl_messages(value: Any, field: str, *, default_role: str) -> list[dict[str, str]]:
    """A TRL column: a list of messages, or a plain string (standard format) taken as one message."""
    if value is None:
        raise RowError(field, "is missing")
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError(field, f"must be a string or a non-empty list of messages, got {value!r:.60}")
    for i, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or "content" not in message
        ):
            raise RowError(
                f"{field}[{i}]", f"must be a message with 'role' and 'content', got {message!r:.60}"
            )
    return normalise_messages(value)
