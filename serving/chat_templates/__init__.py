"""Chat templates for models that carry none (`--chat-template FILE|NAME`), and the check that one exists.

The shipped ones (chatml, llama3, mistral, zephyr) mark assistant turns with `{% generation %}`, so TRL's
assistant-only loss works on them. On a base model that has never seen a template's turn marker, the
marker is a stop string: the engine ends the answer where the tuned model writes it.

    text, stop = read_chat_template("chatml")       # or a path to a .jinja file
    apply_chat_template_option(tokenizer, "chatml", model="path/to/base")
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
# where each shipped template ends an assistant turn (None: the tokenizer's own end-of-sequence token)
TURN_ENDS: dict[str, str | None] = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "mistral": None,
    "zephyr": None,
}


class ChatTemplateError(ValueError):
    """A model with no chat template, or a --chat-template that names nothing readable."""


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.jinja"))


def read_chat_template(option: str) -> tuple[str, str | None]:
    """(template text, turn end to stop at) for a shipped name or a .jinja file's path."""
    if option in shipped_templates():
        return (HERE / f"{option}.jinja").read_text(), TURN_ENDS.get(option)
    path = Path(option).expanduser()
    if not path.is_file():
        raise ChatTemplateError(
            f"--chat-template {option!r} is neither a file nor one of the shipped templates "
            f"({', '.join(shipped_templates())})"
        )
    text = path.read_text()
    if "{{" not in text and "{%" not in text:
        raise ChatTemplateError(f"--chat-template {option!r} holds no Jinja template")
    return text, None


def apply_chat_template_option(tokenizer, option: str | None, *, model: str) -> str | None:
    """Give the tokenizer `option`'s template (it wins over the model's own); refuse a model left without
    one. Returns the string that ends an assistant turn of the given template (None: EOS does)."""
    if option:
        tokenizer.chat_template, turn_end = read_chat_template(option)
        return turn_end
    if not tokenizer.chat_template:
        raise ChatTemplateError(
            f"the model {model!r} has no chat template; give it one with --chat-template "
            f"({', '.join(shipped_templates())}, or a .jinja file)"
        )
    return None
